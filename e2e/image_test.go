package e2e

// TestE2EImage runs the binary the way the container image does, without a
// container engine: built with the Dockerfile's own `go build` line, run as
// the image's unprivileged user with nothing in its environment but PORT,
// from a read-only working directory.

import (
	"bufio"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/logbuf"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// imageUsers are the users a Dockerfile's USER may name that the test knows
// the ids of: distroless's nonroot is 65532:65532.
var imageUsers = map[string]uint32{"nonroot": 65532, "65532": 65532}

// dockerfile is what the test follows of ../Dockerfile.
type dockerfile struct {
	buildEnv    []string // the RUN line's NAME=value prefix: CGO_ENABLED=0
	buildArgs   []string // go's arguments: build -trimpath -ldflags=-s -w -o /out/tbproxy .
	uid, gid    uint32   // USER
	entrypoint  []string // ENTRYPOINT's arguments after the binary
	healthcheck []string // HEALTHCHECK CMD's arguments after the binary
}

// readDockerfile parses the lines of ../Dockerfile the test follows, and
// fails the test if one is missing or in a form it cannot follow.
func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var d dockerfile
	var builds, users []string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if strings.HasSuffix(line, `\`) {
			t.Fatalf("Dockerfile: %q continues on the next line; the test reads one line per instruction", line)
		}
		instr, rest, _ := strings.Cut(line, " ")
		switch strings.ToUpper(instr) {
		case "RUN":
			if strings.Contains(rest, "go build") {
				builds = append(builds, rest)
			}
		case "USER":
			users = append(users, strings.TrimSpace(rest))
		case "ENTRYPOINT":
			d.entrypoint = execForm(t, line, rest)
		case "HEALTHCHECK":
			_, cmd, ok := strings.Cut(rest, "CMD ")
			if !ok {
				t.Fatalf("Dockerfile: %q has no CMD", line)
			}
			d.healthcheck = execForm(t, line, cmd)
		}
	}
	if len(builds) != 1 {
		t.Fatalf("Dockerfile: got %d RUN lines with go build; the test follows exactly one", len(builds))
	}
	words, err := shellWords(builds[0])
	if err != nil {
		t.Fatalf("Dockerfile: RUN %s: %v", builds[0], err)
	}
	i := 0
	for ; i < len(words) && regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`).MatchString(words[i]); i++ {
		d.buildEnv = append(d.buildEnv, words[i])
	}
	if len(words) < i+2 || words[i] != "go" || words[i+1] != "build" {
		t.Fatalf("Dockerfile: RUN %s: want [NAME=value ...] go build ...", builds[0])
	}
	d.buildArgs = words[i+1:]
	if len(users) != 1 {
		t.Fatalf("Dockerfile: got %d USER lines; want 1", len(users))
	}
	user, group, _ := strings.Cut(users[0], ":")
	var ok1, ok2 bool
	d.uid, ok1 = imageUsers[user]
	d.gid, ok2 = imageUsers[group]
	if !ok1 || !ok2 || group == "" {
		t.Fatalf("Dockerfile: USER %s: the test knows the ids of user:group among %v only", users[0], slices.Sorted(maps.Keys(imageUsers)))
	}
	if d.entrypoint == nil || d.healthcheck == nil {
		t.Fatal("Dockerfile: want an ENTRYPOINT and a HEALTHCHECK CMD, both in exec form")
	}
	return d
}

// execForm returns the arguments after the program of an exec-form
// instruction (["/tbproxy", "healthcheck"]).
func execForm(t *testing.T, line, s string) []string {
	t.Helper()
	var argv []string
	if err := json.Unmarshal([]byte(s), &argv); err != nil || len(argv) == 0 {
		t.Fatalf("Dockerfile: %q: want the exec form [\"/tbproxy\", ...]", line)
	}
	return append([]string{}, argv[1:]...)
}

// shellWords splits a RUN line as sh would, for the subset a single
// command with quoted arguments uses; anything else (&&, ;, pipes,
// redirections, expansions, escapes) is an error, so a Dockerfile the
// test cannot follow fails it rather than being half-followed.
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case c == '"' || c == '\'':
			j := strings.IndexByte(s[i+1:], c)
			if j < 0 {
				return nil, fmt.Errorf("unterminated %c", c)
			}
			q := s[i+1 : i+1+j]
			if c == '"' && strings.ContainsAny(q, "$`\\") {
				return nil, fmt.Errorf("%q: expansions and escapes are not followed", q)
			}
			w.WriteString(q)
			inWord = true
			i += j + 1
		case strings.IndexByte("&;|<>$`\\(){}*?[#~", c) >= 0:
			return nil, fmt.Errorf("%q at %d: only one plain command is followed", c, i)
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// image is the binary built as the Dockerfile builds it and the
// directories it runs with, all reachable by the image's user.
type image struct {
	d   dockerfile
	bin string // in a directory the user can read and search, not write
	cwd string // the working directory: read-only to the user
	ro  string // another directory the user cannot write
}

// requireRoot skips the test unless it runs as root, which it needs to
// run the binary as another user; under CI, which runs as root, it fails.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("runs as uid %d: the image test must run as root, to run the binary as the image's user; CI runs as root", os.Geteuid())
	}
	t.Skipf("runs as uid %d: the image test needs root, to run the binary as the image's user (uid 65532)", os.Geteuid())
}

// buildImage builds the binary with the Dockerfile's go build line, from
// the module root, into a directory tree the image's user can reach.
func buildImage(t *testing.T) *image {
	t.Helper()
	img := &image{d: readDockerfile(t)}
	// t.TempDir's parents are 0700; this tree is 0755 down from a temporary
	// directory every user can search.
	root, err := os.MkdirTemp("", "tbproxy-image-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				os.Chmod(p, 0o755) // so RemoveAll can empty the read-only ones
			}
			return nil
		})
		os.RemoveAll(root)
	})
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for dir := root; ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			t.Fatalf("%s (mode %v) cannot be searched by other users: set TMPDIR to a directory uid %d can reach", dir, fi.Mode().Perm(), img.d.uid)
		}
		if dir == filepath.Dir(dir) {
			break
		}
	}
	binDir := filepath.Join(root, "bin")
	img.cwd, img.ro = filepath.Join(root, "cwd"), filepath.Join(root, "ro")
	for dir, mode := range map[string]os.FileMode{binDir: 0o755, img.cwd: 0o555, img.ro: 0o555} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil { // not the umask's
			t.Fatal(err)
		}
	}
	img.bin = filepath.Join(binDir, "tbproxy")

	args := slices.Clone(img.d.buildArgs)
	o := slices.Index(args, "-o")
	if o < 0 || o+1 >= len(args) {
		t.Fatalf("Dockerfile: go %s: want -o <path>", strings.Join(args, " "))
	}
	args[o+1] = img.bin
	if args[len(args)-1] != "." {
		t.Fatalf("Dockerfile: go %s: want the module root, ., as the package", strings.Join(args, " "))
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goTool, args...)
	cmd.Dir = ".." // the module root, as WORKDIR /src after COPY . .
	// The golang image leaves GOFLAGS unset, so VCS stamping is on its
	// default; this machine's GOFLAGS may turn it off.
	cmd.Env = append(append(os.Environ(), img.d.buildEnv...), "GOFLAGS=-buildvcs=auto")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", strings.Join(img.d.buildEnv, " "), strings.Join(cmd.Args, " "), err, out)
	}
	t.Logf("built %s with %s go %s", img.bin, strings.Join(img.d.buildEnv, " "), strings.Join(img.d.buildArgs, " "))
	return img
}

// command returns an unstarted process of the binary with args, run as
// the image runs it: as the image's user with no supplementary groups (and
// so no capabilities), in the read-only working directory, with exactly
// env as its environment: no HOME, no PATH.
func (img *image) command(env map[string]string, args ...string) *exec.Cmd {
	cmd := exec.Command(img.bin, args...)
	cmd.Env = []string{} // not nil, which would inherit the test's
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Dir = img.cwd
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: img.d.uid, Gid: img.d.gid, Groups: []uint32{}}}
	return cmd
}

// freePort returns a loopback port nothing listens on.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// start runs the proxy (the ENTRYPOINT's arguments) with env, which must
// hold PORT, and returns once GET /health answers 200.
func (img *image) start(t *testing.T, env map[string]string) *child {
	t.Helper()
	cmd := img.command(env, img.d.entrypoint...)
	stderr := new(logbuf.Buffer)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, cmd: cmd, base: "http://127.0.0.1:" + env["PORT"], stderr: stderr, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("proxy stderr:\n%s", stderr)
		}
	})
	hc := &http.Client{Timeout: time.Second}
	poll.Until(t, "GET /health to answer 200", func() bool {
		select {
		case <-c.done:
			t.Fatalf("proxy exited with status %d before it was ready:\n%s", cmd.ProcessState.ExitCode(), stderr)
		default:
		}
		resp, err := hc.Get(c.base + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return c
}

// assertRunsAsImage checks, in /proc, that the process runs as the image's
// user with no groups and no capabilities, in the read-only working
// directory, with exactly env as its environment.
func (img *image) assertRunsAsImage(t *testing.T, pid int, env map[string]string) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := strconv.Itoa(int(img.d.uid)), strconv.Itoa(int(img.d.gid))
	want := map[string]string{"Uid": strings.Repeat(uid+" ", 4), "Gid": strings.Repeat(gid+" ", 4),
		"Groups": "", "CapEff": "0000000000000000", "CapPrm": "0000000000000000"}
	for line := range strings.Lines(string(status)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if w, ok := want[k]; ok {
			if got := strings.Join(strings.Fields(v), " "); got != strings.TrimSpace(w) {
				t.Errorf("/proc/%d/status %s: got %q; want %q", pid, k, got, strings.TrimSpace(w))
			}
			delete(want, k)
		}
	}
	if len(want) > 0 {
		t.Errorf("/proc/%d/status: no %v", pid, want)
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	var got, wantEnv []string
	for _, kv := range strings.Split(string(environ), "\x00") {
		if kv != "" {
			got = append(got, kv)
		}
	}
	for k, v := range env {
		wantEnv = append(wantEnv, k+"="+v)
	}
	slices.Sort(got)
	slices.Sort(wantEnv)
	if !slices.Equal(got, wantEnv) {
		t.Errorf("environment: got %q; want exactly %q", got, wantEnv)
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil || cwd != img.cwd {
		t.Errorf("working directory: got %q %v; want %s", cwd, err, img.cwd)
	}
}

// wantVersion is the line `tbproxy version` must print, from what go build
// stamped into the binary, read independently of it. With a .git in the
// module root, the build (VCS stamping on, as in the golang image) must
// have stamped HEAD's commit.
func (img *image) wantVersion(t *testing.T) string {
	t.Helper()
	bi, err := buildinfo.ReadFile(img.bin)
	if err != nil {
		t.Fatal(err)
	}
	rev, modified := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if _, err := os.Stat(filepath.Join("..", ".git")); err == nil {
		head, err := exec.Command("git", "-C", "..", "rev-parse", "HEAD").Output()
		if err != nil {
			t.Fatalf("git rev-parse HEAD: %v", err)
		}
		if rev != strings.TrimSpace(string(head)) {
			t.Errorf("built in a git checkout at %s: the binary has vcs.revision %q", strings.TrimSpace(string(head)), rev)
		}
	}
	line := "tbproxy " + bi.Main.Version + " rev "
	switch {
	case rev == "":
		line += "unknown"
	case len(rev) >= 12:
		line += rev[:12]
	default:
		t.Fatalf("vcs.revision %q: want a commit hash", rev)
	}
	if modified {
		line += " (modified)"
	}
	return line + " " + bi.GoVersion
}

// ownedIn lists the entries of the world-writable directories a process
// could write to without being given one that are owned by uid.
func ownedIn(uid uint32) []string {
	var owned []string
	for _, dir := range []string{os.TempDir(), "/tmp", "/var/tmp", "/dev/shm"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if fi, err := e.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == uid {
					owned = append(owned, filepath.Join(dir, e.Name()))
				}
			}
		}
	}
	slices.Sort(owned)
	return slices.Compact(owned)
}

// TestE2EImage: the binary built with the Dockerfile's go build line is
// static, as distroless/static needs, and run as the image runs it (the
// image's user, no capabilities, nothing in the environment but PORT, a
// read-only working directory) it starts, serves, passes its HEALTHCHECK,
// prints its version and drains on SIGTERM, writing nowhere; with a
// SPOOL_DIR or DEAD_LETTER_DIR it cannot write, it refuses to start and
// says which variable and directory, and why.
//
// With an empty environment the proxy runs in pass-through mode against
// https://api.tinybird.co (the documented defaults): it starts, and a
// request without a token gets 403. The events it accepts are tested with
// TINYBIRD_BASE_URL as the only other variable, pointing at a fakebird.
func TestE2EImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary (skipped with -short)")
	}
	requireRoot(t)
	t.Parallel()
	img := buildImage(t)

	f, err := elf.Open(img.bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the binary is dynamically linked (it has an ELF interpreter); distroless/static has no libc or loader")
		}
	}
	f.Close()

	ownedBefore := ownedIn(img.d.uid)
	t.Cleanup(func() { // after every subtest
		if owned := ownedIn(img.d.uid); !slices.Equal(owned, ownedBefore) {
			t.Errorf("uid %d wrote to a world-writable directory: before %q, after %q", img.d.uid, ownedBefore, owned)
		}
	})

	t.Run("empty environment", func(t *testing.T) {
		t.Parallel()
		env := map[string]string{"PORT": freePort(t)}
		c := img.start(t, env)
		img.assertRunsAsImage(t, c.cmd.Process.Pid, env)

		if code, body := getStatus(t, c.base+"/ready"); code != http.StatusOK {
			t.Errorf("GET /ready: got %d %s; want 200", code, body)
		}
		// Pass-through mode: each client's own token goes upstream, so a
		// request without one is refused before it is buffered.
		r, err := post{ds: "x", lines: []string{`{"n":1}`}}.send(newClient(false), c.base)
		if err != nil || r.status != http.StatusForbidden {
			t.Errorf("POST without a token: got %v %d %s; want 403", err, r.status, r.body)
		} else {
			assertJSONError(t, r)
		}

		// The start-up line says which build this is.
		want := img.wantVersion(t)
		var listening struct{ Msg, Version, Revision string }
		sc := bufio.NewScanner(strings.NewReader(c.stderr.String()))
		for sc.Scan() {
			if json.Unmarshal(sc.Bytes(), &listening) == nil && listening.Msg == "listening" {
				break
			}
		}
		if listening.Msg != "listening" || !strings.HasPrefix(want, "tbproxy "+listening.Version+" rev "+cut(listening.Revision, 12)) {
			t.Errorf("start-up line: got version %q, revision %q; want them as in %q", listening.Version, listening.Revision, want)
		}

		// HEALTHCHECK runs as the same user, with the image's environment.
		hc := img.command(env, img.d.healthcheck...)
		if out, err := hc.CombinedOutput(); err != nil {
			t.Errorf("%s %v: %v %s; want exit status 0", img.bin, img.d.healthcheck, err, out)
		}

		ver := img.command(env, "version")
		out, err := ver.Output()
		if err != nil {
			t.Fatalf("tbproxy version: %v", err)
		}
		if !regexp.MustCompile(`^tbproxy (\(devel\)|v\S+) rev ([0-9a-f]{12}|unknown)( \(modified\))? go1\.\d+(\.\d+)?\n$`).Match(out) || string(out) != want+"\n" {
			t.Errorf("tbproxy version: got %q; want %q", out, want+"\n")
		}
		t.Logf("tbproxy version: %s", strings.TrimSpace(string(out)))

		c.sigterm()
		if code := c.exitStatus(30 * time.Second); code != 0 {
			t.Fatalf("exit status after SIGTERM: %d; want 0", code)
		}
		c.waitLog(`"msg":"stopped","exit_status":0`)
	})

	t.Run("accepts and drains", func(t *testing.T) {
		t.Parallel()
		fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
		env := map[string]string{"PORT": freePort(t), "TINYBIRD_BASE_URL": fb.URL()}
		c := img.start(t, env)
		img.assertRunsAsImage(t, c.cmd.Process.Pid, env)
		client := newClient(true)
		var acked []event
		for i := range 20 {
			p := post{ds: "x", token: upstreamToken, lines: []string{fmt.Sprintf(`{"n":%d}`, i)}}
			p.mustAccept(t, client, c.base)
			acked = append(acked, event{p.ds, p.lines[0]})
		}
		client.CloseIdleConnections()
		c.sigterm()
		if code := c.exitStatus(30 * time.Second); code != 0 {
			t.Fatalf("exit status after SIGTERM: %d; want 0", code)
		}
		assertDelivered(t, fb.Rows(), acked, nil, upstreamToken)
	})

	missing := filepath.Join(img.ro, "dead")
	for _, tc := range []struct {
		name, dir, want string
	}{
		{"SPOOL_DIR", img.ro, "is not writable by uid %d gid %d: permission denied"},
		{"DEAD_LETTER_DIR", img.ro, "is not writable by uid %d gid %d: permission denied"},
		{"DEAD_LETTER_DIR", missing, "does not exist and cannot be created by uid %d gid %d: mkdir " + missing + ": permission denied"},
	} {
		t.Run(tc.name+" "+filepath.Base(tc.dir), func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"PORT": freePort(t), tc.name: tc.dir}
			cmd := img.command(env, img.d.entrypoint...)
			stderr := new(logbuf.Buffer)
			cmd.Stderr = stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			var err error
			started := false
			hc := &http.Client{Timeout: time.Second}
			poll.Until(t, "the proxy to exit, or to answer GET /health", func() bool {
				select {
				case err = <-exited:
					return true
				default:
				}
				if resp, err := hc.Get("http://127.0.0.1:" + env["PORT"] + "/health"); err == nil {
					resp.Body.Close()
					started = true
				}
				return started
			})
			if started {
				cmd.Process.Kill()
				<-exited
				t.Fatalf("%s=%s (not writable by uid %d): the proxy started; want it to refuse to\n%s", tc.name, tc.dir, img.d.uid, stderr)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
				t.Errorf("%s=%s: got %v; want a non-zero exit status", tc.name, tc.dir, err)
			}
			want := tc.name + "=" + tc.dir + ": directory " + fmt.Sprintf(tc.want, img.d.uid, img.d.gid)
			if log := stderr.String(); !strings.Contains(log, `"msg":"cannot start","err":"`+want+`"`) {
				t.Errorf("log: got\n%s\nwant a line saying cannot start: %s", log, want)
			} else {
				t.Logf("exit status %d: %s", ee.ExitCode(), strings.TrimSpace(log))
			}
			if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s exists: %v", missing, err)
			}
		})
	}
}

// cut returns s's first n bytes.
func cut(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
