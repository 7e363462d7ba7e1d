//! `--user`, `--uid`, `--gid` by name or number, from the user and group databases (NSS,
//! through `nix`'s `getpwnam_r`/`getgrnam_r`/`getgrouplist`).

use std::ffi::CString;

use nix::unistd::{Gid, Group, User, getgrouplist};

use super::parse::Id;

/// The credentials the child gets; `None` leaves brood's own.
#[derive(Debug, Default)]
pub struct Credentials {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The supplementary groups (`--user`); `None` means dropped when uid or gid change.
    pub groups: Option<Vec<u32>>,
}

/// Looks up what `--user`, `--uid` and `--gid` name. `--user NAME` gives NAME's uid, its
/// primary gid (unless `--gid`) and the groups that list NAME as a member, as
/// `setpriv --init-groups` and `runuser` do.
pub fn resolve(
    user: Option<&Id>,
    uid: Option<&Id>,
    gid: Option<&Id>,
) -> Result<Credentials, String> {
    let gid = gid.map(group_id).transpose()?;
    let mut creds = Credentials {
        uid: uid.map(user_id).transpose()?,
        gid,
        groups: None,
    };
    if let Some(user) = user {
        let entry = user_entry(user)?;
        let primary = gid.unwrap_or(entry.gid.as_raw());
        let name = CString::new(entry.name.as_bytes())
            .map_err(|_| format!("user {:?} has a NUL byte in its name", entry.name))?;
        let groups = getgrouplist(&name, Gid::from_raw(primary))
            .map_err(|e| format!("cannot list the groups of user {:?}: {e}", entry.name))?;
        creds.uid = Some(entry.uid.as_raw());
        creds.gid = Some(primary);
        creds.groups = Some(groups.into_iter().map(Gid::as_raw).collect());
    }
    Ok(creds)
}

fn user_entry(id: &Id) -> Result<User, String> {
    let found = match id {
        Id::Number(n) => User::from_uid((*n).into()),
        Id::Name(name) => User::from_name(name),
    };
    match found {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(format!("no user {} in the user database", show(id))),
        Err(e) => Err(format!("cannot look up user {}: {e}", show(id))),
    }
}

fn user_id(id: &Id) -> Result<u32, String> {
    match id {
        Id::Number(n) => Ok(*n),
        Id::Name(_) => user_entry(id).map(|u| u.uid.as_raw()),
    }
}

fn group_id(id: &Id) -> Result<u32, String> {
    match id {
        Id::Number(n) => Ok(*n),
        Id::Name(name) => match Group::from_name(name) {
            Ok(Some(group)) => Ok(group.gid.as_raw()),
            Ok(None) => Err(format!("no group {name:?} in the group database")),
            Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
        },
    }
}

fn show(id: &Id) -> String {
    match id {
        Id::Number(n) => n.to_string(),
        Id::Name(name) => format!("{name:?}"),
    }
}
