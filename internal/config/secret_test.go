package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/subsegment/subsegment_exporter/internal/testkit/certtest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

func TestSecretFilesAreReadRelativeToTheFile(t *testing.T) {
	c, err := Load("testdata/good/secret_files.yml", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	h := c.Modules["web"].HTTP
	if h.Headers["Authorization"] != "Bearer from-a-file" || h.Headers["X-Probe"] != "subsegment" {
		t.Errorf("headers %q", map[string]string{"Authorization": string(h.Headers["Authorization"]), "X-Probe": string(h.Headers["X-Probe"])})
	}
	if want := filepath.Join("testdata/good", "secrets/token"); h.HeaderFiles["Authorization"] != want {
		t.Errorf("header file %q, want %q (relative to the configuration's directory)", h.HeaderFiles["Authorization"], want)
	}
	v2, v3 := c.Auths["v2"], c.Auths["v3"]
	if v2.Community != "public" || v3.Password != "correct horse" || v3.PrivPassword != "battery staple" {
		t.Errorf("secrets from files: %q %q %q (white space around them is not part of them)", string(v2.Community), string(v3.Password), string(v3.PrivPassword))
	}
	// Dumps show the files, never the values, and no header twice.
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	dump := string(b) + c.Redacted("default") + c.Redacted("web")
	for _, secret := range []string{"from-a-file", "public", "correct horse", "battery staple"} {
		if strings.Contains(dump, secret) {
			t.Errorf("dump shows %q:\n%s", secret, dump)
		}
	}
	for _, want := range []string{"header_files:", "Authorization: testdata/good/secrets/token", "password_file: testdata/good/secrets/v3.auth", "X-Probe: <secret>"} {
		if !strings.Contains(dump, want) {
			t.Errorf("dump lacks %q:\n%s", want, dump)
		}
	}
	if strings.Contains(dump, "Authorization: <secret>") || strings.Contains(dump, "password: <secret>") {
		t.Errorf("a secret read from a file is shown as an inline secret too:\n%s", dump)
	}
}

// secretsIn calls visit for every Secret reachable from v (struct fields,
// pointers, map values, slice elements), with a setter.
func secretsIn(v reflect.Value, path string, visit func(path string, get func() Secret, set func(Secret))) {
	secretType := reflect.TypeFor[Secret]()
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			secretsIn(v.Elem(), path, visit)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if f := v.Type().Field(i); f.IsExported() {
				secretsIn(v.Field(i), path+"."+f.Name, visit)
			}
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			p := path + "[" + k.String() + "]"
			if v.Type().Elem() == secretType {
				m, k := v, k
				visit(p, func() Secret { return Secret(m.MapIndex(k).String()) }, func(s Secret) { m.SetMapIndex(k, reflect.ValueOf(s)) })
				continue
			}
			secretsIn(v.MapIndex(k), p, visit)
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			secretsIn(v.Index(i), path, visit)
		}
	case reflect.String:
		if v.Type() == secretType && v.CanSet() {
			visit(path, func() Secret { return Secret(v.String()) }, func(s Secret) { v.SetString(string(s)) })
		}
	}
}

// Item 6 of issue 20: a rotated secret must change the fingerprint that
// decides whether a continuous entry keeps its runner. Every secret a
// module reaches is changed in turn, found by reflection, so that a
// secret added later is covered too.
func TestFingerprintCoversEverySecretByValue(t *testing.T) {
	text := `modules:
  web:
    prober: http
    targets: ["127.0.0.1:*"]
    http: {headers: {X-Token: old-token, X-Other: other}}
  snmp:
    targets: ["127.0.0.1:*"]
    snmp:
      hops: {c: {target: "127.0.0.1:16161", auth: v2}, z: {target: "127.0.0.1:16162", auth: v3}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
auths:
  v2: {version: 2, community: public}
  v3: {version: 3, security_level: authPriv, username: u, auth_protocol: SHA256, password: old-password, priv_protocol: AES, priv_password: old-privacy}
  unused: {version: 2, community: unused}
continuous:
  - {target: "http://127.0.0.1:8080/", module: web}
  - {target: "127.0.0.1:9000", module: snmp}
`
	load := func() *Config {
		c, err := Parse([]byte(text), "test.yml", Limits{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := load(), load()
	for _, e := range a.Continuous {
		if a.Fingerprint(e) != b.Fingerprint(e) {
			t.Fatalf("two loads of one file fingerprint %s differently", e.Module)
		}
	}
	seen := 0
	for _, e := range a.Continuous {
		before := a.Fingerprint(e)
		reach := struct {
			M     *Module
			Auths map[string]*Auth
		}{a.Modules[e.Module], map[string]*Auth{}}
		if s := reach.M.SNMP; s != nil {
			for _, h := range s.Hops {
				reach.Auths[h.Auth] = a.Auths[h.Auth]
			}
		}
		secretsIn(reflect.ValueOf(&reach).Elem(), e.Module, func(path string, get func() Secret, set func(Secret)) {
			old := get()
			if old == "" {
				return
			}
			seen++
			set(old + "-rotated")
			if a.Fingerprint(e) == before {
				t.Errorf("%s: changing %s leaves the fingerprint as it was", e.Module, path)
			}
			if strings.Contains(a.Fingerprint(e), string(old)) {
				t.Errorf("the fingerprint shows the secret %s", path)
			}
			set(old)
		})
		if a.Fingerprint(e) != before {
			t.Errorf("%s: fingerprint not restored", e.Module)
		}
	}
	if seen != 5 {
		t.Errorf("%d secrets changed, want 5 (2 headers, a community, 2 v3 passwords)", seen)
	}
	// A credential no entry uses changes nothing.
	a.Auths["unused"].Community = "changed"
	for _, e := range a.Continuous {
		if a.Fingerprint(e) != b.Fingerprint(e) {
			t.Errorf("%s: an unused auth changed the fingerprint", e.Module)
		}
	}
}

func TestFingerprintFollowsSecretAndTLSFiles(t *testing.T) {
	dir := t.TempDir()
	ca := certtest.New(t, dir, "proxy")
	cert, key := ca.Issue(t, "client")
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("token", "first\n")
	write("priv", "privacy-1\n")
	write("subsegment.yml", `modules:
  web:
    prober: http
    targets: ["127.0.0.1:*"]
    http:
      header_files: {X-Token: token}
      tls: {ca_file: `+filepath.Base(ca.CAFile)+`, cert_file: `+cert+`, key_file: `+key+`}
  snmp:
    targets: ["127.0.0.1:*"]
    snmp:
      hops: {c: {target: "127.0.0.1:16161", auth: v3}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
auths:
  v3: {version: 3, security_level: authPriv, username: u, auth_protocol: SHA256, password: password-1, priv_protocol: AES, priv_password_file: priv}
continuous:
  - {target: "https://127.0.0.1:8443/", module: web}
  - {target: "127.0.0.1:9000", module: snmp}
`)
	fingerprints := func() []string {
		c, err := Load(filepath.Join(dir, "subsegment.yml"), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		return []string{c.Fingerprint(c.Continuous[0]), c.Fingerprint(c.Continuous[1])}
	}
	first := fingerprints()
	if again := fingerprints(); again[0] != first[0] || again[1] != first[1] {
		t.Fatal("the same files fingerprint differently")
	}
	write("token", "second\n")
	if got := fingerprints(); got[0] == first[0] || got[1] != first[1] {
		t.Errorf("a rotated header file: web changed %v (want true), snmp changed %v (want false)", got[0] != first[0], got[1] != first[1])
	}
	write("priv", "privacy-2\n")
	second := fingerprints()
	if second[1] == first[1] {
		t.Error("a rotated priv_password_file leaves the fingerprint as it was")
	}
	// A renewed client certificate, same paths.
	cert2, key2 := ca.Issue(t, "client-renewed")
	for from, to := range map[string]string{cert2: cert, key2: key} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		write(filepath.Base(to), string(b))
	}
	if got := fingerprints(); got[0] == second[0] {
		t.Error("a renewed TLS certificate and key leave the fingerprint as it was")
	}
}

// A secret file that is not a regular file (a FIFO nobody writes to, a
// directory) is an error at once, never a load that waits.
func TestSecretFileMustBeARegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{fifo, dir} {
		text := "modules:\n  default: {targets: [\"127.0.0.1:*\"]}\nauths:\n  v2: {version: 2, community_file: " + path + "}\n"
		_, err := Parse([]byte(text), filepath.Join(dir, "subsegment.yml"), Limits{})
		if err == nil || !strings.Contains(err.Error(), ":4: auths.v2.community_file: cannot read "+path+": it is not a regular file") {
			t.Errorf("%s: %v", path, err)
		}
	}
}

// The chain's keys are a secret of every entry that signs with them: a
// rotation changes the fingerprint of relay chains (their sessions must
// open again, with the new keys), not of http entries, which do not use
// them; the keys never show in it.
func TestFingerprintCoversTheKeys(t *testing.T) {
	c, err := Parse([]byte(`modules:
  relays: {targets: ["127.0.0.1:*"]}
  web: {prober: http, targets: ["127.0.0.1:*"]}
continuous:
  - {target: "127.0.0.1:9000", module: relays}
  - {target: "http://127.0.0.1:8080/", module: web}
`), "test.yml", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	relays, web := c.Continuous[0], c.Continuous[1]
	old := frame.Keys{[]byte("old-0123456789abcdef")}
	c.UseKeys(old)
	r0, w0 := c.Fingerprint(relays), c.Fingerprint(web)
	c.UseKeys(frame.Keys{[]byte("old-0123456789abcdef")})
	if c.Fingerprint(relays) != r0 {
		t.Error("the same keys, read again, change the fingerprint")
	}
	c.UseKeys(frame.Keys{[]byte("old-0123456789abcdef"), []byte("new-0123456789abcdef")})
	if c.Fingerprint(relays) == r0 || c.Fingerprint(web) != w0 {
		t.Error("a second key: the relay chain's fingerprint must change, the http entry's must not")
	}
	if strings.Contains(c.Fingerprint(relays), "0123456789abcdef") {
		t.Error("the fingerprint shows a key")
	}
}

// The command's secret flags read their files by the same rule as the
// *_file keys (ReadSecretFile, ReadKeyFile): never a FIFO or a device,
// never empty, at most 64 KiB; keys one per line.
func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := ReadKeyFile(write("two", "first-0123456789abcdef\n\n  second-0123456789abcdef \n"))
	if err != nil || len(keys) != 2 || string(keys[0]) != "first-0123456789abcdef" || string(keys[1]) != "second-0123456789abcdef" {
		t.Fatalf("two keys: %q %v", keys, err)
	}
	for _, tc := range []struct{ path, want string }{
		{fifo, fifo + ": it is not a regular file"},
		{"/dev/zero", "/dev/zero: it is not a regular file"},
		{dir, dir + ": it is not a regular file"},
		{write("empty", " \n\n"), "is empty: write the secret into it"},
		{write("huge", strings.Repeat("0123456789abcdef\n", 5000)), "is larger than 64 KiB"},
		{write("short", "\nshort\n"), "line 2: key is 5 bytes, at least 16 needed"},
		{filepath.Join(dir, "missing"), "it does not exist: create it"},
	} {
		if _, err := ReadKeyFile(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.path, err, tc.want)
		}
	}
}
