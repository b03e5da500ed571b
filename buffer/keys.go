package buffer

import (
	"fmt"
	"time"
)

// ErrTooManyDatasources reports a Put for a datasource not held now while
// MaxDatasources others are (HTTP 429). It wraps ErrFull: like a full
// buffer, it passes once the flusher delivers what is held.
var ErrTooManyDatasources = fmt.Errorf("%w: too many datasources held at once", ErrFull)

// ErrTooManyTokens reports a Put for a client token (pass-through mode)
// that upstream has not accepted lately, while MaxUnverifiedTokens such
// tokens are held (HTTP 429). It wraps ErrFull.
var ErrTooManyTokens = fmt.Errorf("%w: too many unverified tokens held at once", ErrFull)

// VerifiedFor is how long a token upstream accepted stays verified after
// its last acceptance: exempt from MaxUnverifiedTokens.
const VerifiedFor = 10 * time.Minute

// maxVerified bounds the table of verified tokens. Only tokens upstream
// accepted enter it, so clients cannot fill it with junk; past the bound a
// newly verified token is not remembered and only counts against
// MaxUnverifiedTokens again.
const maxVerified = 10_000

// keys counts the events held per datasource and per client token, so the
// caps on distinct names and tokens bound what is held now, not every name
// ever seen: a name or token is forgotten when its last event is released.
// Each distinct name and token held is also charged its length against
// MaxBytes, once, however many entries share it. Guarded by Buffer.mu.
type keys struct {
	maxNames, maxUnverified int

	names      map[string]int // events held per datasource
	tokens     map[string]*heldToken
	unverified int // tokens held that are not verified
	verified   map[string]time.Time
}

type heldToken struct {
	token    string // the stored copy every entry of this token shares
	events   int
	verified bool
}

func newKeys(maxNames, maxUnverified int) keys {
	return keys{maxNames: maxNames, maxUnverified: maxUnverified,
		names: make(map[string]int), tokens: make(map[string]*heldToken), verified: make(map[string]time.Time)}
}

// admit decides whether n events for key may be held, and returns the bytes
// its name and token add to the held bytes (0 when already held).
func (k *keys) admit(key Key, now time.Time) (extra int, err error) {
	if _, ok := k.names[key.Datasource]; !ok {
		if k.maxNames > 0 && len(k.names) >= k.maxNames {
			return 0, ErrTooManyDatasources
		}
		extra += len(key.Datasource)
	}
	if key.Token != "" && k.tokens[key.Token] == nil {
		if k.maxUnverified > 0 && !k.isVerified(key.Token, now) && k.unverified >= k.maxUnverified {
			return 0, ErrTooManyTokens
		}
		extra += len(key.Token)
	}
	return extra, nil
}

// hold counts n more events for key, admitted by admit, and returns key
// with its token replaced by the copy held, so that entries share one.
func (k *keys) hold(key Key, n int, now time.Time) Key {
	k.names[key.Datasource] += n
	if key.Token == "" {
		return key
	}
	t := k.tokens[key.Token]
	if t == nil {
		t = &heldToken{token: key.Token, verified: k.isVerified(key.Token, now)}
		k.tokens[key.Token] = t
		if !t.verified {
			k.unverified++
		}
	}
	t.events += n
	key.Token = t.token
	return key
}

// shared returns key with its token replaced by the copy held, if one is,
// so that a table keyed by it (streams) keeps no copy of its own.
func (k *keys) shared(key Key) Key {
	if t := k.tokens[key.Token]; t != nil {
		key.Token = t.token
	}
	return key
}

// release stops counting n events of key and returns the bytes freed by
// names and tokens no longer held.
func (k *keys) release(key Key, n int) (freed int) {
	if held, ok := k.names[key.Datasource]; ok {
		if held <= n {
			delete(k.names, key.Datasource)
			freed += len(key.Datasource)
		} else {
			k.names[key.Datasource] = held - n
		}
	}
	if t := k.tokens[key.Token]; t != nil {
		if t.events <= n {
			delete(k.tokens, key.Token)
			freed += len(key.Token)
			if !t.verified {
				k.unverified--
			}
		} else {
			t.events -= n
		}
	}
	return freed
}

func (k *keys) isVerified(token string, now time.Time) bool {
	until, ok := k.verified[token]
	return ok && now.Before(until)
}

func (k *keys) verify(token string, now time.Time) {
	if _, ok := k.verified[token]; !ok && len(k.verified) >= maxVerified {
		for t, until := range k.verified {
			if !now.Before(until) {
				delete(k.verified, t)
			}
		}
		if len(k.verified) >= maxVerified {
			return
		}
	}
	k.verified[token] = now.Add(VerifiedFor)
	if t := k.tokens[token]; t != nil && !t.verified {
		t.verified = true
		k.unverified--
	}
}

// Verify records that upstream accepted a batch sent with token (a
// client's, in pass-through mode): for VerifiedFor the token is exempt
// from MaxUnverifiedTokens. Safe for concurrent use.
func (b *Buffer) Verify(token string) {
	if token == "" {
		return
	}
	b.mu.Lock()
	b.keys.verify(token, time.Now())
	b.roomLocked() // a token no longer unverified may now fit (ErrTooManyTokens)
	b.mu.Unlock()
}
