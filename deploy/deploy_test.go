// Package deploy_test checks the deployment assets in this directory (the
// Grafana dashboard, Prometheus config and alert rules, the compose file and
// the systemd unit) against each other, the README and docs/metrics.md, and
// has promtool check the Prometheus config and unit-test the alert rules.
// e2e/prometheus_test.go evaluates the dashboard's queries in a real
// Prometheus scraping the proxy.
package deploy_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metricNameRE matches a tbproxy metric name wherever it appears: in a
// PromQL expression, a panel description or an alert annotation.
var metricNameRE = regexp.MustCompile(`tbproxy_[a-z_]+`)

// TestDeployAssets checks the files in deploy/ against each other and
// against the docs: the dashboard and the alert rules parse and have the
// expected shape, they name only metrics from the table in docs/metrics.md,
// and the dashboard shows every metric in that table. YAML is checked line
// by line (the module has no YAML dependency and should not get one for a
// test).
func TestDeployAssets(t *testing.T) {
	readme := readText(t, filepath.Join("..", "README.md"))
	documented := docMetrics(t, readText(t, filepath.Join("..", "docs", "metrics.md")))

	dashText := readText(t, "grafana/tbproxy-dashboard.json")
	checkDashboard(t, dashText)
	alertsText := readText(t, "prometheus/alerts.yml")
	alertExprs := checkAlertRules(t, alertsText)
	checkPrometheusConfig(t, readText(t, "prometheus/prometheus.yml"))
	checkCompose(t, readme, readText(t, "docker-compose.yml"), readText(t, "tbproxy.env.example"),
		readText(t, "grafana/provisioning/dashboards/tbproxy.yml"))
	checkSystemdUnit(t, readme, readText(t, "systemd/tbproxy.service"))

	// (b) Every tbproxy metric the dashboard or the alerts name is documented.
	for file, text := range map[string]string{"dashboard": dashText, "alerts.yml": alertsText} {
		for _, name := range usedMetrics(text, documented) {
			if _, ok := documented[name]; !ok {
				t.Errorf("%s uses %s, which is not in the table in docs/metrics.md", file, name)
			}
		}
	}

	// (c) Every documented metric is on the dashboard.
	onDashboard := usedMetrics(dashText, documented)
	for name := range documented {
		if !slices.Contains(onDashboard, name) {
			t.Errorf("docs/metrics.md's table lists %s, but the dashboard does not use it", name)
		}
	}

	// The table's "alert on" advice has a rule for each of these.
	alertMetrics := usedMetrics(strings.Join(alertExprs, "\n"), documented)
	for _, name := range []string{
		"tbproxy_dropped_events_total", "tbproxy_dead_letter_errors_total", "tbproxy_buffer_events",
		"tbproxy_buffer_max_events", "tbproxy_buffer_oldest_event_age_seconds", "tbproxy_http_requests_total",
		"tbproxy_quarantined_events_total",
	} {
		if !slices.Contains(alertMetrics, name) {
			t.Errorf("no alert rule expression uses %s", name)
		}
	}
}

func readText(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// docMetrics returns the metric names in the first column of the table
// under "## Metrics" in docs/metrics.md, each mapped to its type column
// ("counter", "gauge", "histogram").
func docMetrics(t *testing.T, doc string) map[string]string {
	t.Helper()
	_, section, ok := strings.Cut(doc, "\n## Metrics\n")
	if !ok {
		t.Fatal(`docs/metrics.md has no "## Metrics" section`)
	}
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	metrics := map[string]string{}
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(strings.TrimSpace(line), "|") || len(cells) < 4 {
			continue
		}
		typ := strings.TrimSpace(cells[2])
		for _, name := range metricNameRE.FindAllString(cells[1], -1) {
			metrics[name] = typ
		}
	}
	if len(metrics) < 10 {
		t.Fatalf("found only %d metrics in docs/metrics.md's table: %v", len(metrics), metrics)
	}
	return metrics
}

// usedMetrics returns the distinct tbproxy metric names in text, with the
// _bucket, _sum and _count series of a documented histogram mapped to the
// histogram's name.
func usedMetrics(text string, documented map[string]string) []string {
	var names []string
	for _, name := range metricNameRE.FindAllString(text, -1) {
		if _, ok := documented[name]; !ok {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				base, found := strings.CutSuffix(name, suffix)
				if typ, ok := documented[base]; found && ok && (typ == "histogram" || (typ == "summary" && suffix != "_bucket")) {
					name = base
					break
				}
			}
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

type grafanaDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type grafanaPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *grafanaDatasource       `json:"datasource"`
	GridPos    struct{ X, Y, W, H int } `json:"gridPos"`
	Targets    []struct {
		Datasource *grafanaDatasource `json:"datasource"`
		Expr       string             `json:"expr"`
		RefID      string             `json:"refId"`
	} `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Thresholds struct {
				Steps []struct {
					Color string `json:"color"`
				} `json:"steps"`
			} `json:"thresholds"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's panels
}

func checkDashboard(t *testing.T, text string) {
	t.Helper()
	var d struct {
		UID           string         `json:"uid"`
		Title         string         `json:"title"`
		SchemaVersion int            `json:"schemaVersion"`
		Panels        []grafanaPanel `json:"panels"`
		Templating    struct {
			List []struct {
				Type  string          `json:"type"`
				Name  string          `json:"name"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal([]byte(text), &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard: uid and title must be set (provisioning keys on the uid)")
	}
	if d.SchemaVersion < 36 {
		t.Errorf("dashboard: schemaVersion %d, want 36 or newer", d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "datasource" && string(v.Query) != `"prometheus"` {
			t.Errorf("dashboard: datasource variable %q queries %s, want \"prometheus\"", v.Name, v.Query)
		}
	}
	if vars["datasource"] != "datasource" {
		t.Error(`dashboard: want a templating variable "datasource" of type datasource`)
	}
	if vars["instance"] != "query" {
		t.Error(`dashboard: want a templating variable "instance" of type query`)
	}

	var panels []grafanaPanel
	for _, p := range d.Panels {
		panels = append(panels, p)
		panels = append(panels, p.Panels...)
	}
	ids := map[int]bool{}
	redDrops := false
	for _, p := range panels {
		if ids[p.ID] {
			t.Errorf("dashboard: panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if g := p.GridPos; g.W < 1 || g.X < 0 || g.X+g.W > 24 || g.H < 1 {
			t.Errorf("dashboard: panel %q has gridPos %+v outside the 24-column grid", p.Title, g)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("dashboard: panel %q must use the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("dashboard: panel %q has no queries", p.Title)
		}
		for _, q := range p.Targets {
			if strings.TrimSpace(q.Expr) == "" || q.RefID == "" {
				t.Errorf("dashboard: panel %q has a query without expr or refId", p.Title)
			}
			if q.Datasource != nil && q.Datasource.UID != "${datasource}" {
				t.Errorf("dashboard: panel %q query %s must use the ${datasource} variable", p.Title, q.RefID)
			}
			if err := checkBrackets(q.Expr); err != "" {
				t.Errorf("dashboard: panel %q query %s: %s in %q", p.Title, q.RefID, err, q.Expr)
			}
			if strings.Contains(q.Expr, "tbproxy_") && !strings.Contains(q.Expr, `instance=~"$instance"`) {
				t.Errorf("dashboard: panel %q query %s ignores the instance variable: %q", p.Title, q.RefID, q.Expr)
			}
			if strings.Contains(q.Expr, "tbproxy_dropped_events_total") && p.GridPos.Y <= 1 {
				for _, s := range p.FieldConfig.Defaults.Thresholds.Steps {
					redDrops = redDrops || s.Color == "red"
				}
			}
		}
	}
	if !redDrops {
		t.Error("dashboard: want a panel in the top row on tbproxy_dropped_events_total with a red threshold")
	}
}

// checkBrackets reports unbalanced (), [] or {} in a PromQL expression,
// ignoring quoted strings; "" means balanced.
func checkBrackets(expr string) string {
	var stack []rune
	var quote rune
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	for _, r := range expr {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '"' || r == '\'' || r == '`':
			quote = r
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, r)
		case pairs[r] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != pairs[r] {
				return "unbalanced " + string(r)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if quote != 0 {
		return "unterminated string"
	}
	if len(stack) > 0 {
		return "unclosed " + string(stack[len(stack)-1])
	}
	return ""
}

// yamlLines returns the lines of a YAML file and fails on tabs, which YAML
// does not allow for indentation.
func yamlLines(t *testing.T, file, text string) []string {
	t.Helper()
	lines := strings.Split(text, "\n")
	for i, line := range lines {
		if strings.Contains(line, "\t") {
			t.Errorf("%s:%d: tab character", file, i+1)
		}
	}
	return lines
}

// checkAlertRules checks the rule file's shape line by line and returns the
// text of each rule's expression.
func checkAlertRules(t *testing.T, text string) []string {
	t.Helper()
	lines := yamlLines(t, "alerts.yml", text)
	first := ""
	for _, line := range lines {
		if s := strings.TrimSpace(line); s != "" && !strings.HasPrefix(s, "#") {
			first = line
			break
		}
	}
	if first != "groups:" {
		t.Errorf("alerts.yml: first key is %q, want groups:", first)
	}
	type rule struct {
		name  string
		lines []string
	}
	var rules []rule
	for _, line := range lines {
		s := strings.TrimSpace(line)
		if name, ok := strings.CutPrefix(s, "- alert: "); ok {
			rules = append(rules, rule{name: name})
			continue
		}
		if len(rules) > 0 {
			rules[len(rules)-1].lines = append(rules[len(rules)-1].lines, line)
		}
	}
	if len(rules) < 6 {
		t.Fatalf("alerts.yml: found %d alert rules, want at least 6", len(rules))
	}
	var exprs []string
	seen := map[string]bool{}
	for _, r := range rules {
		if seen[r.name] {
			t.Errorf("alerts.yml: alert %s defined twice", r.name)
		}
		seen[r.name] = true
		var expr []string
		inExpr := false
		keys := map[string]bool{}
		for _, line := range r.lines {
			s := strings.TrimSpace(line)
			key, value, _ := strings.Cut(s, ":")
			switch {
			case key == "expr":
				inExpr = true
				keys[key] = true
				if v := strings.TrimSpace(value); v != "|" && v != ">" && v != "|-" && v != ">-" {
					expr = append(expr, v)
				}
				continue
			case inExpr && strings.HasPrefix(line, strings.Repeat(" ", 10)) && !isKey(key):
				expr = append(expr, s)
				continue
			}
			inExpr = false
			if isKey(key) {
				keys[key] = true
			}
			if key == "for" {
				if _, err := time.ParseDuration(strings.TrimSpace(value)); err != nil {
					t.Errorf("alerts.yml: %s: for: %v", r.name, err)
				}
			}
		}
		for _, k := range []string{"expr", "labels", "severity", "annotations", "summary", "description"} {
			if !keys[k] {
				t.Errorf("alerts.yml: alert %s has no %s", r.name, k)
			}
		}
		e := strings.Join(expr, " ")
		if e == "" {
			t.Errorf("alerts.yml: alert %s has an empty expr", r.name)
		} else if err := checkBrackets(e); err != "" {
			t.Errorf("alerts.yml: alert %s: %s in %q", r.name, err, e)
		}
		exprs = append(exprs, e)
	}
	return exprs
}

var yamlKeyRE = regexp.MustCompile(`^-?\s*[a-z_]+$`)

func isKey(s string) bool { return yamlKeyRE.MatchString(s) }

func checkPrometheusConfig(t *testing.T, text string) {
	t.Helper()
	lines := yamlLines(t, "prometheus.yml", text)
	for _, want := range []string{
		"scrape_interval: 15s",
		"rule_files:",
		"- /etc/prometheus/alerts.yml",
		"scrape_configs:",
		"- job_name: tbproxy",
		"metrics_path: /metrics",
		`- targets: ["tbproxy:8080"]`,
	} {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.TrimSpace(l) == want }) {
			t.Errorf("prometheus.yml: no line %q", want)
		}
	}
}

// checkCompose checks the compose file's wiring: the files it mounts exist
// where prometheus.yml and the Grafana provisioning expect them, the health
// check, and a stop grace period longer than the proxy's drain.
func checkCompose(t *testing.T, readme, compose, env, dashProvider string) {
	t.Helper()
	lines := yamlLines(t, "docker-compose.yml", compose)
	has := func(want string) bool {
		return slices.ContainsFunc(lines, func(l string) bool { return strings.TrimSpace(l) == want })
	}
	for _, want := range []string{
		"tbproxy:", "prometheus:", "grafana:",
		"context: ..",
		"- path: ./tbproxy.env.example",
		`- "8080:8080"`, `- "9090:9090"`, `- "3000:3000"`,
		`test: ["CMD", "/tbproxy", "healthcheck"]`,
		"- ./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
		"- ./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro",
		"- ./grafana/provisioning/datasources:/etc/grafana/provisioning/datasources:ro",
		"- ./grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards:ro",
		"- ./grafana/tbproxy-dashboard.json:/etc/grafana/dashboards/tbproxy-dashboard.json:ro",
		`GF_AUTH_ANONYMOUS_ENABLED: "true"`,
		"GF_AUTH_ANONYMOUS_ORG_ROLE: Viewer",
	} {
		if !has(want) {
			t.Errorf("docker-compose.yml: no line %q", want)
		}
	}
	if !strings.Contains(dashProvider, "path: /etc/grafana/dashboards\n") {
		t.Error("grafana/provisioning/dashboards/tbproxy.yml must read /etc/grafana/dashboards, where compose mounts the dashboard")
	}
	for _, want := range []string{"TINYBIRD_TOKEN=", "AUTHORIZATION_TOKEN="} {
		if !strings.Contains(env, "\n"+want) {
			t.Errorf("tbproxy.env.example: no %s line", want)
		}
	}

	grace := time.Duration(0)
	for _, l := range lines {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "stop_grace_period: "); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("docker-compose.yml: stop_grace_period: %v", err)
			}
			grace = d
		}
	}
	drain := envDuration(t, env, readme, "SHUTDOWN_DELAY") + envDuration(t, env, readme, "SHUTDOWN_TIMEOUT")
	if grace <= drain {
		t.Errorf("docker-compose.yml: stop_grace_period %s must exceed SHUTDOWN_DELAY + SHUTDOWN_TIMEOUT = %s", grace, drain)
	}
}

// envDuration returns key's value in an env file, or its default from the
// README's Configuration table.
func envDuration(t *testing.T, env, readme, key string) time.Duration {
	t.Helper()
	value := ""
	for _, line := range strings.Split(env, "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			value = strings.TrimSpace(v)
		}
	}
	if value == "" {
		value = readmeDefault(t, readme, key)
	}
	d, err := time.ParseDuration(value)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return d
}

// readmeDefault returns the default column of key's row in the README's
// Configuration table.
func readmeDefault(t *testing.T, readme, key string) string {
	t.Helper()
	for _, line := range strings.Split(readme, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) > 3 && strings.TrimSpace(cells[1]) == "`"+key+"`" {
			return strings.Trim(strings.TrimSpace(cells[2]), "`")
		}
	}
	t.Fatalf("README.md's Configuration table has no row for %s", key)
	return ""
}

// checkSystemdUnit checks the directives the deployment depends on, and
// that TimeoutStopSec exceeds the default drain.
func checkSystemdUnit(t *testing.T, readme, unit string) {
	t.Helper()
	directives := map[string]string{}
	for _, line := range strings.Split(unit, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			directives[k] = v
		}
	}
	for k, want := range map[string]string{
		"User":            "tbproxy",
		"EnvironmentFile": "/etc/tbproxy/tbproxy.env",
		"ExecStart":       "/usr/local/bin/tbproxy",
		"Restart":         "on-failure",
		"KillSignal":      "SIGTERM",
		"StateDirectory":  "tbproxy",
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"ProtectHome":     "yes",
		"PrivateTmp":      "yes",
		"LimitNOFILE":     "65536",
		"WantedBy":        "multi-user.target",
	} {
		if got := directives[k]; got != want {
			t.Errorf("tbproxy.service: %s=%q, want %q", k, got, want)
		}
	}
	stop, err := strconv.Atoi(directives["TimeoutStopSec"])
	if err != nil {
		t.Fatalf("tbproxy.service: TimeoutStopSec: %v", err)
	}
	drain := envDuration(t, "", readme, "SHUTDOWN_DELAY") + envDuration(t, "", readme, "SHUTDOWN_TIMEOUT")
	if time.Duration(stop)*time.Second <= drain {
		t.Errorf("tbproxy.service: TimeoutStopSec=%d must exceed SHUTDOWN_DELAY + SHUTDOWN_TIMEOUT = %s", stop, drain)
	}
}

// findPromtool returns promtool's path. Without it the test is skipped
// locally but fails under CI, where .ci/run installs Debian's prometheus
// package (which brings promtool).
func findPromtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("promtool not found on PATH; .ci/run installs Debian's prometheus package")
	}
	t.Skip("promtool not found on PATH: install it (apt-get install prometheus) to check the rules and config")
	return ""
}

// promtool runs promtool with args and fails the test, showing its output,
// unless it succeeds.
func promtool(t *testing.T, bin string, args ...string) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		return
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}

// TestAlertRulesPromtool has Prometheus's own tool parse the alert rules and
// run their unit tests (prometheus/alerts.test.yml), and checks that those
// tests cover every alert both firing and staying quiet.
func TestAlertRulesPromtool(t *testing.T) {
	bin := findPromtool(t)
	promtool(t, bin, "check", "rules", "prometheus/alerts.yml")
	promtool(t, bin, "test", "rules", "prometheus/alerts.test.yml")

	fires, quiet := alertTestCases(t, readText(t, "prometheus/alerts.test.yml"))
	alerts := regexp.MustCompile(`(?m)^\s*- alert: (\S+)$`).FindAllStringSubmatch(readText(t, "prometheus/alerts.yml"), -1)
	for _, m := range alerts {
		if fires[m[1]] == 0 {
			t.Errorf("alerts.test.yml: no case where %s fires", m[1])
		}
		if quiet[m[1]] == 0 {
			t.Errorf("alerts.test.yml: no case where %s stays quiet", m[1])
		}
	}
}

// alertTestCases counts, per alert name, the alert_rule_test cases of a
// promtool test file that expect it to fire (exp_alerts listed) and to stay
// quiet (none listed). Line by line, like the other YAML checks here.
func alertTestCases(t *testing.T, text string) (fires, quiet map[string]int) {
	t.Helper()
	fires, quiet = map[string]int{}, map[string]int{}
	name, firing := "", false
	flush := func() {
		switch {
		case name == "":
		case firing:
			fires[name]++
		default:
			quiet[name]++
		}
		name, firing = "", false
	}
	for _, line := range yamlLines(t, "alerts.test.yml", text) {
		s := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(s, "- eval_time:"), strings.HasPrefix(s, "- name:"):
			flush()
		case strings.HasPrefix(s, "alertname:"):
			name = strings.TrimSpace(strings.TrimPrefix(s, "alertname:"))
		case strings.HasPrefix(s, "exp_alerts:") && s != "exp_alerts: []":
			firing = true
		}
	}
	flush()
	return fires, quiet
}

// TestPrometheusConfigPromtool has promtool check prometheus.yml. Its
// rule_files entry is the path compose mounts alerts.yml at
// (/etc/prometheus/alerts.yml, checked by TestDeployAssets), which exists
// only in the container: the file as shipped gets a syntax-only check, and
// a copy pointing at this directory's alerts.yml gets the full one, which
// loads the rules too.
func TestPrometheusConfigPromtool(t *testing.T) {
	bin := findPromtool(t)
	promtool(t, bin, "check", "config", "--syntax-only", "prometheus/prometheus.yml")

	const mounted = "- /etc/prometheus/alerts.yml"
	config := readText(t, "prometheus/prometheus.yml")
	if !strings.Contains(config, mounted) {
		t.Fatalf("prometheus.yml: no rule_files entry %q", mounted)
	}
	rules, err := filepath.Abs("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(local, []byte(strings.Replace(config, mounted, "- "+rules, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, bin, "check", "config", local)
}
