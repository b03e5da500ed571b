package console

import (
	"encoding/base64"
	"regexp"
	"strings"
	"testing"
)

// What the page promises that can be checked without a browser; the
// end-to-end test runs it in Chromium.
func TestPage(t *testing.T) {
	p := string(Page())
	if n := len(p); n == 0 || n > 30<<10 {
		t.Errorf("page is %d bytes; keep it under 30 KB", n)
	}
	for _, want := range []string{
		"<!doctype html>", `<meta name="viewport" content="width=device-width, initial-scale=1">`,
		`fetch(api("streams")`, `method: "POST"`, "encodeURIComponent(name)",
		// The hooks the browser test reads.
		"tr.dataset.datasource", "tr.dataset.client", "tr.dataset.tokenId", "td.dataset.field", "document.body.dataset.updated",
	} {
		if !strings.Contains(p, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Server strings (datasource names, upstream errors) go in as text only.
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(p, bad) {
			t.Errorf("page uses %s", bad)
		}
	}
	// Nothing from elsewhere: it must work offline and leak nothing.
	if m := regexp.MustCompile(`(?i:https?:|(src|href|action)\s*=\s*["']?\s*//|@import)|url\(`).FindString(p); m != "" {
		t.Errorf("page references something external: %q", m)
	}
	// PageCSP hashes one script and one style, and blocks inline handlers
	// and style attributes: the page must use none.
	if strings.Count(p, "<script") != 1 || strings.Count(p, "<style") != 1 {
		t.Error("want exactly one inline <script> and one <style>")
	}
	if m := regexp.MustCompile(`<[^>]*\s(on[a-z]+|style)\s*=`).FindString(stripRaw(p)); m != "" {
		t.Errorf("inline handler or style attribute, which the CSP would block: %q", m)
	}
	checkBalanced(t, stripRaw(p))
}

func TestPageCSP(t *testing.T) {
	csp := PageCSP()
	if strings.Contains(csp, "unsafe") {
		t.Errorf("CSP %q allows unsafe sources", csp)
	}
	for _, dir := range []string{"script-src", "style-src"} {
		m := regexp.MustCompile(dir + ` 'sha256-([^']+)'`).FindStringSubmatch(csp)
		if m == nil {
			t.Fatalf("CSP %q has no %s hash", csp, dir)
		}
		if sum, err := base64.StdEncoding.DecodeString(m[1]); err != nil || len(sum) != 32 {
			t.Errorf("%s hash %q is not a SHA-256", dir, m[1])
		}
	}
}

// stripRaw removes comments and the contents of <script> and <style>,
// whose text is not markup.
func stripRaw(p string) string {
	p = regexp.MustCompile(`(?s)<!--.*?-->`).ReplaceAllString(p, "")
	return regexp.MustCompile(`(?s)(<(script|style)>).*?(</(script|style)>)`).ReplaceAllString(p, "$1$3")
}

// checkBalanced is a small stand-in for an HTML parser (golang.org/x/net
// is not a dependency): every non-void element is closed, in order.
func checkBalanced(t *testing.T, p string) {
	t.Helper()
	void := map[string]bool{"meta": true, "link": true, "br": true, "img": true, "input": true, "hr": true, "!doctype": true}
	var open []string
	for _, m := range regexp.MustCompile(`<(/?)(!?[a-zA-Z][a-zA-Z0-9]*)[^>]*>`).FindAllStringSubmatch(p, -1) {
		name := strings.ToLower(m[2])
		switch {
		case void[name]:
		case m[1] == "":
			open = append(open, name)
		case len(open) == 0 || open[len(open)-1] != name:
			t.Fatalf("</%s> closes %v", name, open)
		default:
			open = open[:len(open)-1]
		}
	}
	if len(open) != 0 {
		t.Errorf("unclosed elements: %v", open)
	}
}
