//! HTTP Basic authentication against an Apache `htpasswd` file: the only way a request gets
//! a `REMOTE_USER`.
//!
//! The hash forms Apache's `htpasswd` writes: bcrypt (`-B`, `$2y$`), apr1 MD5 (`-m`, the
//! default, `$apr1$`) and SHA-1 (`-s`, `{SHA}`). bcrypt goes through the `bcrypt` crate;
//! apr1 is the md5-crypt algorithm with Apache's magic, over the `md-5` crate; SHA-1 over
//! `sha1`. Comparisons of digests are constant-time. Lines of other forms (crypt(3),
//! plain text) are refused when the file is loaded, so no user is silently locked out.

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

/// The users of an htpasswd file.
#[derive(Debug, Clone)]
pub(crate) struct Htpasswd {
    users: HashMap<String, Hash>,
}

impl Htpasswd {
    /// Reads and checks the whole file.
    pub(crate) fn load(path: &Path) -> Result<Htpasswd> {
        let what = format!("cgi: htpasswd {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| from_io(e, what.clone()))?;
        Htpasswd::parse(&text).map_err(|why| Error::invalid(what, why))
    }

    fn parse(text: &str) -> std::result::Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: no `user:hash`", n + 1))?;
            let hash = if hash.starts_with("$2y$")
                || hash.starts_with("$2b$")
                || hash.starts_with("$2a$")
            {
                Hash::Bcrypt(hash.to_string())
            } else if let Some(rest) = hash.strip_prefix("$apr1$") {
                let (salt, h) = rest
                    .split_once('$')
                    .ok_or_else(|| format!("line {}: bad $apr1$ hash", n + 1))?;
                Hash::Apr1 {
                    salt: salt.as_bytes()[..salt.len().min(8)].to_vec(),
                    hash: h.to_string(),
                }
            } else if let Some(b64) = hash.strip_prefix("{SHA}") {
                let digest = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| format!("line {}: bad {{SHA}} hash", n + 1))?;
                Hash::Sha1(digest)
            } else {
                return Err(format!(
                    "line {} (user {user:?}): unsupported hash (bcrypt, $apr1$ and {{SHA}} are)",
                    n + 1
                ));
            };
            users.insert(user.to_string(), hash);
        }
        Ok(Htpasswd { users })
    }

    /// Whether `user` exists and `password` is theirs. bcrypt is slow by design: call this
    /// off the async threads.
    pub(crate) fn check(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            None => false,
            Some(Hash::Bcrypt(h)) => bcrypt::verify(password, h).unwrap_or(false),
            Some(Hash::Sha1(d)) => eq(Sha1::digest(password).as_slice(), d),
            Some(Hash::Apr1 { salt, hash }) => eq(apr1(password, salt).as_bytes(), hash.as_bytes()),
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
        let h = Htpasswd::parse(
            "a:$apr1$Rn3ec92l$r58FgtLDf4RDs/6I.toeL1\n\
             s:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
        )
        .unwrap();
        assert!(h.check("a", b"password"));
        assert!(!h.check("a", b"passwore"));
        assert!(h.check("s", b"password"));
        assert!(!h.check("s", b"Password"));
        assert!(!h.check("nobody", b"password"));
        assert!(Htpasswd::parse("x:plain\n").is_err());
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
