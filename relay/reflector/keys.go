package reflector

import "github.com/subsegment/subsegment_exporter/internal/wire/stamp"

// followKeys takes the KeyRing's keys when a reload has rotated them: an
// authenticated reflector verifies and signs every packet after it with
// the new keys (with two keys in the file during a rollover, senders of
// either are answered). Its mode stays what it started with.
func (r *Reflector) followKeys() {
	v := r.cfg.KeyRing.Version()
	if v == r.keysVersion {
		return
	}
	r.keysVersion = v
	if keys := r.cfg.KeyRing.Current(); r.mode == stamp.Authenticated && len(keys) > 0 {
		r.auth = stamp.NewAuth(keys)
		r.req.Auth = r.auth
	}
}
