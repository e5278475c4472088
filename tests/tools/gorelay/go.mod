module github.com/ambitmesh/ambit/tests/tools/gorelay

go 1.26.0
