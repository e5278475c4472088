package flagvalue

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestValues(t *testing.T) {
	type vals struct {
		list     []string
		mark     uint32
		key, val string
	}
	tests := []struct {
		name    string
		args    []string
		want    vals
		wantErr string
	}{
		{name: "defaults", want: vals{list: []string{"eth0"}, mark: 0x400, key: "k", val: "v"}},
		{name: "list", args: []string{"-list", " eth1, ,eth2 ,"}, want: vals{list: []string{"eth1", "eth2"}, mark: 0x400, key: "k", val: "v"}},
		{name: "empty list", args: []string{"-list="}, want: vals{list: []string{}, mark: 0x400, key: "k", val: "v"}},
		{name: "hex", args: []string{"-mark=0x10000"}, want: vals{list: []string{"eth0"}, mark: 0x10000, key: "k", val: "v"}},
		{name: "decimal", args: []string{"-mark", "1024"}, want: vals{list: []string{"eth0"}, mark: 1024, key: "k", val: "v"}},
		{name: "too big", args: []string{"-mark=0x100000000"}, wantErr: `invalid value "0x100000000" for flag -mark: value out of range`},
		{name: "not a number", args: []string{"-mark=x"}, wantErr: `invalid value "x" for flag -mark: parse error`},
		{name: "negative", args: []string{"-mark=-1"}, wantErr: "-mark: parse error"},
		{name: "label", args: []string{"-label=a.io/b=c=d"}, want: vals{list: []string{"eth0"}, mark: 0x400, key: "a.io/b", val: "c=d"}},
		{name: "label without value", args: []string{"-label=a="}, wantErr: `invalid value "a=" for flag -label: want key=value`},
		{name: "label without key", args: []string{"-label==b"}, wantErr: "want key=value"},
		{name: "label without =", args: []string{"-label=ab"}, wantErr: "want key=value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := vals{list: []string{"eth0"}, mark: 0x400, key: "k", val: "v"}
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			fs.Var(ListVar(&v.list), "list", "")
			fs.Var(Uint32Var(&v.mark), "mark", "")
			fs.Var(KeyValueVar(&v.key, &v.val), "label", "")
			err := fs.Parse(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(v.list, tt.want.list) || (v.list == nil) != (tt.want.list == nil) || v.mark != tt.want.mark || v.key != tt.want.key || v.val != tt.want.val {
				t.Fatalf("got %+v, want %+v", v, tt.want)
			}
		})
	}
}

// The defaults shown in -help are the values the fields had when registered.
func TestDefaultsShown(t *testing.T) {
	list, mark, key, val := []string{"a", "b"}, uint32(0xf00), "k", "v"
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.Var(ListVar(&list), "list", "")
	fs.Var(Uint32Var(&mark), "mark", "")
	fs.Var(KeyValueVar(&key, &val), "label", "")
	var b strings.Builder
	fs.SetOutput(&b)
	fs.PrintDefaults()
	for _, want := range []string{"(default a,b)", "(default 0xf00)", "(default k=v)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("help %q lacks %q", b.String(), want)
		}
	}
	if strings.Contains(b.String(), "panic") {
		t.Errorf("help: %s", b.String())
	}
}
