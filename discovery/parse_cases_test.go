package discovery

import "strings"

// parseErrorCases are files with known problems; want lists every error
// line Parse must return, in order.
var parseErrorCases = []struct {
	name string
	yaml string
	want []string
}{
	{
		name: "bad IPv4",
		yaml: `
workloads:
  - name: a
    namespace: default
    ips: [198.18.1.300]
`,
		want: []string{`mesh.yaml:5: workloads[0].ips[0]: "198.18.1.300" is not an IP address`},
	},
	{
		name: "bad IP in block list",
		yaml: `
workloads:
  - name: a
    namespace: default
    ips:
      - 198.18.1.1
      - fd00::zz
`,
		want: []string{`mesh.yaml:7: workloads[0].ips[1]: "fd00::zz" is not an IP address`},
	},
	{
		name: "unknown top-level field",
		yaml: `
workload:
  - name: a
`,
		want: []string{`mesh.yaml:2: workload: unknown field`},
	},
	{
		name: "unknown nested field",
		yaml: `
services:
  - name: s
    namespace: default
    ports:
      - {port: 80, protocol: TCP}
`,
		want: []string{`mesh.yaml:6: services[0].ports[0].protocol: unknown field`},
	},
	{
		name: "port zero and too large",
		yaml: `
services:
  - name: s
    namespace: default
    ports:
      - port: 0
      - port: 70000
        targetPort: -1
`,
		want: []string{
			`mesh.yaml:6: services[0].ports[0].port: 0 is not a valid port (1-65535)`,
			`mesh.yaml:7: services[0].ports[1].port: 70000 is not a valid port (1-65535)`,
			`mesh.yaml:8: services[0].ports[1].targetPort: -1 is not a valid port (1-65535)`,
		},
	},
	{
		name: "port missing or not a number",
		yaml: `
services:
  - name: s
    namespace: default
    ports:
      - name: web
      - port: "80"
      - port: 80
        targetPort: http
`,
		want: []string{
			`mesh.yaml:6: services[0].ports[0].port: must be set`,
			`mesh.yaml:7: services[0].ports[1].port: must be a port number, got "80"`,
			`mesh.yaml:9: services[0].ports[2].targetPort: "http": named target ports are not supported in the mesh model file, use a number`,
		},
	},
	{
		name: "empty and invalid names",
		yaml: `
namespaces:
  - name: Default
nodes:
  - name: node_1
workloads:
  - namespace: default
    name: ""
  - name: -a
    namespace: default
    serviceAccount: "x y"
services:
  - name: my.svc
    namespace: default
    hostname: "bad host"
`,
		want: []string{
			`mesh.yaml:3: namespaces[0].name: "Default" is not a valid DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)`,
			`mesh.yaml:5: nodes[0].name: "node_1" is not a valid DNS-1123 subdomain (at most 253 characters of lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)`,
			`mesh.yaml:7: workloads[0].namespace: namespace "default" is not declared in namespaces`,
			`mesh.yaml:8: workloads[0].name: must be set`,
			`mesh.yaml:9: workloads[1].name: "-a" is not a valid DNS-1123 subdomain (at most 253 characters of lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)`,
			`mesh.yaml:10: workloads[1].namespace: namespace "default" is not declared in namespaces`,
			`mesh.yaml:11: workloads[1].serviceAccount: "x y" is not a valid DNS-1123 subdomain (at most 253 characters of lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)`,
			`mesh.yaml:13: services[0].name: "my.svc" is not a valid DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)`,
			`mesh.yaml:14: services[0].namespace: namespace "default" is not declared in namespaces`,
			`mesh.yaml:15: services[0].hostname: "bad host" is not a valid DNS-1123 subdomain (at most 253 characters of lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)`,
		},
	},
	{
		name: "missing name falls back to the item line",
		yaml: `
workloads:
  - namespace: default
    ips: [198.18.1.1]
`,
		want: []string{`mesh.yaml:3: workloads[0].name: must be set`},
	},
	{
		name: "invalid labels",
		yaml: `
workloads:
  - name: a
    namespace: default
    labels:
      "bad key": x
      app: "-bad-"
      example.com/ok: ""
`,
		want: []string{
			`mesh.yaml:6: workloads[0].labels["bad key"]: "bad key" is not a valid label key (an optional DNS-1123 subdomain and '/', then at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)`,
			`mesh.yaml:7: workloads[0].labels["app"]: "-bad-" is not a valid label value (at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)`,
		},
	},
	{
		name: "duplicate workload names and IPs",
		yaml: `
workloads:
  - name: a
    namespace: default
    ips: [198.18.1.1]
  - name: a
    namespace: default
    ips: [198.18.1.2]
  - name: b
    namespace: default
    ips: [198.18.1.3, 198.18.1.1, 198.18.1.3]
`,
		want: []string{
			`mesh.yaml:6: workloads[1].name: workload default/a is already declared (workloads[0].name, line 3)`,
			`mesh.yaml:11: workloads[2].ips[1]: 198.18.1.1 of workload default/b is already used by workload default/a (workloads[0].ips[0], line 5)`,
			`mesh.yaml:11: workloads[2].ips[2]: 198.18.1.3 is listed twice (workloads[2].ips[0], line 11)`,
		},
	},
	{
		name: "duplicate uid",
		yaml: `
workloads:
  - name: a
    namespace: default
    uid: same
  - name: b
    namespace: default
    uid: same
`,
		want: []string{`mesh.yaml:8: workloads[1].uid: uid "same" of workload default/b is already used by workload default/a (workloads[0].uid, line 5)`},
	},
	{
		name: "duplicate VIPs, VIP on a workload IP, duplicate ports",
		yaml: `
workloads:
  - name: a
    namespace: default
    ips: [198.18.1.1]
services:
  - name: s1
    namespace: default
    vips: [198.19.0.1]
    ports:
      - {name: http, port: 80}
      - {name: http, port: 80}
  - name: s2
    namespace: default
    vips: ["198.19.0.1", 198.18.1.1]
`,
		want: []string{
			`mesh.yaml:12: services[0].ports[1].name: port name "http" is already declared (services[0].ports[0].name, line 11)`,
			`mesh.yaml:12: services[0].ports[1].port: port 80 is already declared (services[0].ports[0].port, line 11)`,
			`mesh.yaml:15: services[1].vips[0]: 198.19.0.1 of service default/s2 is already used by service default/s1 (services[0].vips[0], line 9)`,
			`mesh.yaml:15: services[1].vips[1]: 198.18.1.1 of service default/s2 is already used by workload default/a (workloads[0].ips[0], line 5)`,
		},
	},
	{
		name: "duplicate node names and addresses, namespaces",
		yaml: `
namespaces:
  - name: default
  - name: default
nodes:
  - name: n1
    addresses: [198.18.0.1]
  - name: n2
    addresses: ["::ffff:198.18.0.1"]
  - name: n1
`,
		want: []string{
			`mesh.yaml:4: namespaces[1].name: namespace "default" is already declared (namespaces[0].name, line 3)`,
			`mesh.yaml:9: nodes[1].addresses[0]: 198.18.0.1 of node n2 is already used by node n1 (nodes[0].addresses[0], line 7)`,
			`mesh.yaml:10: nodes[2].name: node "n1" is already declared (nodes[0].name, line 6)`,
		},
	},
	{
		name: "workload on undeclared node",
		yaml: `
nodes:
  - name: node1
workloads:
  - name: a
    namespace: default
    node: node2
`,
		want: []string{`mesh.yaml:7: workloads[0].node: node "node2" is not declared in nodes`},
	},
	{
		name: "endpoints",
		yaml: `
workloads:
  - name: a
    namespace: default
    ips: [198.18.1.1]
  - name: empty
    namespace: default
services:
  - name: s
    namespace: default
    endpoints:
      - {workload: default/nope}
      - {workload: default/a, ip: 198.18.1.2}
      - {}
      - {workload: default/empty}
`,
		want: []string{
			`mesh.yaml:12: services[0].endpoints[0].workload: workload "default/nope" is not declared`,
			`mesh.yaml:13: services[0].endpoints[1].ip: 198.18.1.2 is not an IP of workload default/a`,
			`mesh.yaml:14: services[0].endpoints[2]: must set workload or ip`,
			`mesh.yaml:15: services[0].endpoints[3].ip: must be set: workload default/empty has no IPs`,
		},
	},
	{
		name: "endpoint bad IP",
		yaml: `
services:
  - name: s
    namespace: default
    endpoints:
      - {ip: 198.18.1.x}
`,
		want: []string{`mesh.yaml:6: services[0].endpoints[0].ip: "198.18.1.x" is not an IP address`},
	},
	{
		name: "wrong kinds",
		yaml: `
namespaces: default
nodes:
  - just-a-name
workloads:
  - name: [a]
    namespace: default
    ips: 198.18.1.1
    labels: [app]
services:
  - name: s
    namespace: default
    ports: {port: 80}
    selector: {app: {x: y}}
`,
		want: []string{
			`mesh.yaml:2: namespaces: must be a list, got "default"`,
			`mesh.yaml:4: nodes[0]: must be a mapping, got "just-a-name"`,
			`mesh.yaml:6: workloads[0].name: must be a string, got a list`,
			`mesh.yaml:8: workloads[0].ips: must be a list, got "198.18.1.1"`,
			`mesh.yaml:9: workloads[0].labels: must be a mapping, got a list`,
			`mesh.yaml:13: services[0].ports: must be a list, got a mapping`,
			`mesh.yaml:14: services[0].selector["app"]: must be a string, got a mapping`,
		},
	},
	{
		name: "top level not a mapping",
		yaml: `[1, 2]`,
		want: []string{`mesh.yaml:1: must be a mapping, got a list`},
	},
	{
		name: "duplicate keys",
		yaml: `
workloads:
  - name: a
    namespace: default
    name: b
    labels: {app: x, app: y}
`,
		want: []string{
			`mesh.yaml:5: workloads[0].name: set twice (first at line 3)`,
			`mesh.yaml:6: workloads[0].labels["app"]: set twice (first at line 6)`,
		},
	},
	{
		name: "yaml syntax error",
		yaml: `
workloads:
  - name: a
   namespace: default
`,
		want: []string{`mesh.yaml:2: did not find expected '-' indicator`},
	},
	{
		name: "aliases rejected",
		yaml: `
namespaces:
  - &ns {name: a}
  - *ns
workloads:
  - name: w
    namespace: a
    labels: *ns
`,
		want: []string{
			`mesh.yaml:4: namespaces[1]: YAML aliases are not supported`,
			`mesh.yaml:8: workloads[0].labels: YAML aliases are not supported`,
		},
	},
	{
		name: "several documents",
		yaml: `
workloads: []
---
services: []
`,
		want: []string{`mesh.yaml:3: only one YAML document is allowed`},
	},
	{
		name: "namespace not declared",
		yaml: `
namespaces:
  - name: default
workloads:
  - name: a
    namespace: defualt
`,
		want: []string{`mesh.yaml:6: workloads[0].namespace: namespace "defualt" is not declared in namespaces`},
	},
	{
		name: "null IP and empty IP",
		yaml: `
workloads:
  - name: a
    namespace: default
    ips: [~, ""]
`,
		want: []string{
			`mesh.yaml:5: workloads[0].ips[0]: must be an IP address, got null`,
			`mesh.yaml:5: workloads[0].ips[1]: "" is not an IP address`,
		},
	},
	{
		name: "zone and unspecified address",
		yaml: `
workloads:
  - name: a
    namespace: default
    ips: ["fe80::1%eth0", 0.0.0.0]
`,
		want: []string{
			`mesh.yaml:5: workloads[0].ips[0]: "fe80::1%eth0" has a zone, which is not allowed`,
			`mesh.yaml:5: workloads[0].ips[1]: 0.0.0.0 is the unspecified address`,
		},
	},
	{
		name: "locality: unknown key, invalid values, wrong shape",
		yaml: `
nodes:
  - name: n1
    locality: {region: us-east, zone: us-east-1a, rack: r1}
  - name: n2
    locality: us-east/1a
workloads:
  - name: a
    namespace: default
    node: n1
    locality:
      region: -bad-
      subzone: [x]
`,
		want: []string{
			`mesh.yaml:4: nodes[0].locality.rack: unknown field`,
			`mesh.yaml:6: nodes[1].locality: must be a mapping, got "us-east/1a"`,
			`mesh.yaml:13: workloads[0].locality.subzone: must be a string, got a list`,
		},
	},
	{
		name: "locality values that are not label values",
		yaml: `
nodes:
  - name: n1
    locality: {region: us-east, zone: "us east 1a"}
workloads:
  - name: a
    namespace: default
    locality:
      region: -bad-
      zone: ` + strings.Repeat("z", 64) + `
`,
		want: []string{
			`mesh.yaml:4: nodes[0].locality.zone: "us east 1a" is not a valid label value (at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)`,
			`mesh.yaml:9: workloads[0].locality.region: "-bad-" is not a valid label value (at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)`,
			`mesh.yaml:10: workloads[0].locality.zone: "` + strings.Repeat("z", 64) + `" is not a valid label value (at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)`,
		},
	},
	{
		name: "trafficDistribution not a known value",
		yaml: `
services:
  - name: s
    namespace: default
    trafficDistribution: preferClose
  - name: t
    namespace: default
    trafficDistribution: PreferSameNode
`,
		want: []string{
			`mesh.yaml:5: services[0].trafficDistribution: "preferClose" is not one of PreferClose, PreferSameZone`,
			`mesh.yaml:8: services[1].trafficDistribution: "PreferSameNode" is not one of PreferClose, PreferSameZone`,
		},
	},
	{
		name: "trafficDistribution not a string",
		yaml: `
services:
  - name: s
    namespace: default
    trafficDistribution: {zone: a}
`,
		want: []string{`mesh.yaml:5: services[0].trafficDistribution: must be a string, got a mapping`},
	},
}
