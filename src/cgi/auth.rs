//! HTTP Basic authentication against an Apache `htpasswd` file: the only way a request gets
//! a `REMOTE_USER`.
//!
//! The hash forms Apache's `htpasswd` writes: bcrypt (`-B`, `$2y$`), apr1 MD5 (`-m`, the
//! default, `$apr1$`) and SHA-1 (`-s`, `{SHA}`). bcrypt goes through the `bcrypt` crate;
//! apr1 is the md5-crypt algorithm with Apache's magic, over the `md-5` crate; SHA-1 over
//! `sha1`. Comparisons of digests are constant-time. Lines of other forms (crypt(3),
//! plain text) or malformed ones are skipped with a warning naming the line (that user
//! cannot log in); a file with no usable line is an error.
//!
//! An unknown user costs as much as a known one: the password is checked against a dummy
//! hash of the scheme and cost most lines of the file use, so the time of a 401 does not
//! tell which users exist.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use md5::{Digest, Md5};
use sha1::Sha1;

use crate::error::{Error, Result, from_io};

/// One user's stored hash.
#[derive(Debug, Clone)]
enum Hash {
    Bcrypt(String),
    Apr1 { salt: Vec<u8>, hash: String },
    Sha1(Vec<u8>),
}

impl Hash {
    /// The line's hash, or why it cannot be used.
    fn parse(hash: &str) -> std::result::Result<Hash, &'static str> {
        if let Some(cost) = ["$2y$", "$2b$", "$2a$"]
            .iter()
            .find_map(|p| hash.strip_prefix(p))
        {
            // `$2y$NN$` + 22 characters of salt + 31 of hash, as bcrypt::verify wants.
            let ok = hash.len() == 60
                && cost.as_bytes()[..2].iter().all(u8::is_ascii_digit)
                && cost.as_bytes()[2] == b'$';
            return if ok {
                Ok(Hash::Bcrypt(hash.to_string()))
            } else {
                Err("malformed bcrypt hash")
            };
        }
        if let Some(rest) = hash.strip_prefix("$apr1$") {
            let (salt, h) = rest.split_once('$').ok_or("malformed $apr1$ hash")?;
            return Ok(Hash::Apr1 {
                salt: salt.as_bytes()[..salt.len().min(8)].to_vec(),
                hash: h.to_string(),
            });
        }
        if let Some(b64) = hash.strip_prefix("{SHA}") {
            return match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(d) if d.len() == 20 => Ok(Hash::Sha1(d)),
                _ => Err("malformed {SHA} hash"),
            };
        }
        Err("unsupported hash: crypt(3) or plain text? (bcrypt, $apr1$ and {SHA} are)")
    }

    /// The scheme and cost, to find the one most lines use.
    fn kind(&self) -> (u8, u32) {
        match self {
            Hash::Sha1(_) => (0, 0),
            Hash::Apr1 { .. } => (1, 0),
            Hash::Bcrypt(h) => (2, h[4..6].parse().unwrap_or(0)),
        }
    }

    /// A hash of the same scheme and cost: what an unknown user's password is checked
    /// against, for the time it takes (the result is thrown away, so which password it
    /// hashes does not matter). bcrypt's is computed once, at load.
    fn dummy(kind: (u8, u32)) -> Hash {
        let mut secret = [0u8; 16];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = (std::process::id() as usize * 31 + i * 7) as u8;
        }
        match kind {
            (2, cost) => match bcrypt::hash_with_salt(secret, cost, secret) {
                Ok(h) => Hash::Bcrypt(h.format_for_version(bcrypt::Version::TwoB)),
                Err(_) => Hash::Sha1(vec![0; 20]),
            },
            (1, _) => Hash::Apr1 {
                salt: b"broodslt".to_vec(),
                hash: "0".repeat(22),
            },
            _ => Hash::Sha1(vec![0; 20]),
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Hash::Sha1(d) => eq(Sha1::digest(password).as_slice(), d),
            Hash::Apr1 { salt, hash } => eq(apr1(password, salt).as_bytes(), hash.as_bytes()),
        }
    }
}

/// The users of an htpasswd file.
#[derive(Debug, Clone)]
pub(crate) struct Htpasswd {
    users: HashMap<String, Hash>,
    /// Checked for unknown users, so they take as long as known ones.
    dummy: Hash,
}

impl Htpasswd {
    /// Reads the whole file: the users, and a warning for each line skipped.
    pub(crate) fn load(path: &Path) -> Result<(Htpasswd, Vec<String>)> {
        let what = format!("cgi: htpasswd {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| from_io(e, what.clone()))?;
        let (users, skipped) = Htpasswd::parse(&text);
        let warnings: Vec<String> = skipped
            .into_iter()
            .map(|w| format!("htpasswd {}: {w}", path.display()))
            .collect();
        match users {
            Some(h) => Ok((h, warnings)),
            None => Err(Error::invalid(
                what,
                if warnings.is_empty() {
                    "no user in the file".to_string()
                } else {
                    format!("no usable line ({})", warnings.join("; "))
                },
            )),
        }
    }

    /// The users (`None` if there is none) and why each skipped line was skipped.
    fn parse(text: &str) -> (Option<Htpasswd>, Vec<String>) {
        let mut users = HashMap::new();
        let mut skipped = Vec::new();
        // As Apache reads the file (`ap_cfg_getline`): a UTF-8 byte order mark at its start
        // (an editor's) and white space around each line are not part of the user or hash.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                skipped.push(format!("line {}: no `user:hash`, skipped", n + 1));
                continue;
            };
            match Hash::parse(hash) {
                Ok(h) => {
                    users.insert(user.to_string(), h);
                }
                Err(why) => skipped.push(format!(
                    "line {} (user {user:?}): {why}; skipped, this user cannot log in",
                    n + 1
                )),
            }
        }
        let mut kinds: HashMap<(u8, u32), usize> = HashMap::new();
        for h in users.values() {
            *kinds.entry(h.kind()).or_default() += 1;
        }
        let Some((&kind, _)) = kinds.iter().max_by_key(|(k, n)| (**n, **k)) else {
            return (None, skipped);
        };
        let dummy = Hash::dummy(kind);
        (Some(Htpasswd { users, dummy }), skipped)
    }

    /// Whether `user` exists and `password` is theirs. bcrypt is slow by design: call this
    /// off the async threads. An unknown user's password is checked too, against the
    /// dummy hash, so that both take as long.
    pub(crate) fn check(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            None => {
                let _ = std::hint::black_box(self.dummy.verify(password));
                false
            }
            Some(h) => h.verify(password),
        }
    }
}

/// Constant-time equality (the lengths are not secret).
fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The md5-crypt algorithm (Poul-Henning Kamp's) with Apache's `$apr1$` magic: the hash part
/// of `$apr1$salt$hash`.
fn apr1(pw: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let mut alt = Md5::new();
    alt.update(pw);
    alt.update(salt);
    alt.update(pw);
    let alt = alt.finalize();

    let mut ctx = Md5::new();
    ctx.update(pw);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = pw.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = pw.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for r in 0..1000 {
        let mut c = Md5::new();
        if r & 1 == 1 {
            c.update(pw);
        } else {
            c.update(fin);
        }
        if r % 3 != 0 {
            c.update(salt);
        }
        if r % 7 != 0 {
            c.update(pw);
        }
        if r & 1 == 1 {
            c.update(fin);
        } else {
            c.update(pw);
        }
        fin = c.finalize();
    }
    const ITOA: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(ITOA[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let f = |i: usize| u32::from(fin[i]);
    put((f(0) << 16) | (f(6) << 8) | f(12), 4);
    put((f(1) << 16) | (f(7) << 8) | f(13), 4);
    put((f(2) << 16) | (f(8) << 8) | f(14), 4);
    put((f(3) << 16) | (f(9) << 8) | f(15), 4);
    put((f(4) << 16) | (f(10) << 8) | f(5), 4);
    put(f(11), 2);
    out
}

/// The user and password of `Authorization: Basic ...`, when well-formed.
pub(crate) fn basic_credentials(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let creds = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let colon = creds.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(creds[..colon].to_vec()).ok()?;
    if user.is_empty() || user.contains('\0') {
        return None;
    }
    Some((user, creds[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hashes() {
        // Written by Apache's htpasswd 2.4 (-m, -s) and by bcrypt's reference.
        let (h, skipped) = Htpasswd::parse(
            "a:$apr1$Rn3ec92l$r58FgtLDf4RDs/6I.toeL1\n\
             s:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
        );
        let h = h.unwrap();
        assert!(skipped.is_empty());
        assert!(h.check("a", b"password"));
        assert!(!h.check("a", b"passwore"));
        assert!(h.check("s", b"password"));
        assert!(!h.check("s", b"Password"));
        assert!(!h.check("nobody", b"password"));
        assert!(Htpasswd::parse("x:plain\n").0.is_none());
    }

    #[test]
    fn unusable_lines_are_skipped_with_their_number() {
        let (h, skipped) = Htpasswd::parse(
            "# users\n\
             old:Xo3k1C7v2c3kI\n\
             s:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\
             nocolon\n\
             b:$2y$05$short\n",
        );
        let h = h.expect("one usable line");
        assert!(h.check("s", b"password"));
        assert!(!h.check("old", b"anything"));
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(
            skipped[0].starts_with("line 2 (user \"old\")"),
            "{skipped:?}"
        );
        assert!(skipped[1].starts_with("line 4"), "{skipped:?}");
        assert!(skipped[2].starts_with("line 5 (user \"b\")"), "{skipped:?}");
        let (none, skipped) = Htpasswd::parse("old:Xo3k1C7v2c3kI\n");
        assert!(none.is_none());
        assert_eq!(skipped.len(), 1);
    }

    #[test]
    fn a_byte_order_mark_and_white_space_around_lines_are_ignored_as_apache_does() {
        let (h, skipped) = Htpasswd::parse(
            "\u{feff}a:$apr1$Rn3ec92l$r58FgtLDf4RDs/6I.toeL1 \t\r\n\
             s:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\t\n",
        );
        let h = h.unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert!(h.check("a", b"password"));
        assert!(h.check("s", b"password"));
        assert!(!h.check("\u{feff}a", b"password"));
    }

    #[test]
    fn the_dummy_hash_has_the_scheme_and_cost_most_lines_use() {
        let bcrypt = |cost: u32| bcrypt::hash("pw", cost).unwrap();
        let text = format!(
            "a:{}\nb:{}\nc:{}\ns:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
            bcrypt(5),
            bcrypt(6),
            bcrypt(6)
        );
        let h = Htpasswd::parse(&text).0.unwrap();
        assert_eq!(h.dummy.kind(), (2, 6));
        // A valid bcrypt string (verify computes it, rather than failing at once).
        let Hash::Bcrypt(dummy) = &h.dummy else {
            panic!("not bcrypt: {:?}", h.dummy)
        };
        assert!(matches!(bcrypt::verify("pw", dummy), Ok(false)));
        assert!(h.check("b", b"pw") && !h.check("nobody", b"pw"));
    }

    #[test]
    fn credentials() {
        assert_eq!(
            basic_credentials(b"Basic YWxpY2U6c2VjcmV0"),
            Some(("alice".into(), b"secret".to_vec()))
        );
        assert_eq!(basic_credentials(b"Bearer xyz"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
    }
}
