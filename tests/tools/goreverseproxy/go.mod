module github.com/ambitmesh/ambit/tests/tools/goreverseproxy

go 1.26.0
