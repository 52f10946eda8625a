//! The account database files of a Unix endpoint (`/etc/passwd`, `/etc/group`, `/etc/shadow`),
//! read one way by everything that reads them: the JIT trigger (is the user in the admin
//! group?), the control socket (who may use it, and who is a peer), fail-closed (removing the
//! user from the group), the process source (whose process is it?) and the change ledger (what
//! changed?). Two readers that disagreed about one line (one skipped `#` comments, one did not)
//! would let a crafted file mean one thing to the trigger and another to the rest.
//!
//! The rules are the C library's `files` backend's: a line that is empty or whose first
//! non-blank character is `#` is a comment; fields are separated by `:`; a passwd entry has
//! seven fields with numeric uid and gid, a group entry four with a numeric gid; a line that is
//! not such an entry is ignored (as `getpwnam` ignores it). Group members are the
//! comma-separated names of the fourth field, trimmed, empty ones dropped. A name listed twice
//! keeps its first entry for lookups, while membership counts in any entry of the name, because
//! the C library's `getgrouplist` (what a login's groups come from) reads every line too.
//!
//! Names only come from these files (no NSS, LDAP or SSSD lookup): a directory user is shown by
//! uid, as docs/recorder.md says.

use std::path::Path;

/// The fields of one entry line, or `None` for a comment or blank line.
pub fn fields(line: &str) -> Option<Vec<&str>> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    Some(line.split(':').collect())
}

/// Every entry line of a file's `text`, as fields.
pub fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines().filter_map(fields)
}

/// One passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub home: &'a str,
    pub shell: &'a str,
}

/// One group entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<'a> {
    pub name: &'a str,
    pub gid: u32,
    pub members: Vec<&'a str>,
}

impl<'a> User<'a> {
    /// The passwd entry on `line`, if it is one.
    pub fn parse(line: &'a str) -> Option<Self> {
        let f = fields(line)?;
        if f.len() < 7 || f[0].is_empty() {
            return None;
        }
        Some(Self {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
            shell: f[6],
        })
    }
}

impl<'a> Group<'a> {
    /// The group entry on `line`, if it is one.
    pub fn parse(line: &'a str) -> Option<Self> {
        let f = fields(line)?;
        if f.len() < 4 || f[0].is_empty() {
            return None;
        }
        Some(Self {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3]
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect(),
        })
    }
}

/// Every passwd entry of `text`.
pub fn users(text: &str) -> impl Iterator<Item = User<'_>> {
    text.lines().filter_map(User::parse)
}

/// Every group entry of `text`.
pub fn groups(text: &str) -> impl Iterator<Item = Group<'_>> {
    text.lines().filter_map(Group::parse)
}

/// Whether `user` is a member of `group` in group-file `text` (listed in any entry of it).
pub fn is_member(text: &str, group: &str, user: &str) -> bool {
    groups(text).any(|g| g.name == group && g.members.contains(&user))
}

/// The gid of group `name` (its first entry) and its members (of every entry), in the group
/// file at `path`.
pub fn lookup_group(path: &Path, name: &str) -> Option<(u32, Vec<String>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let gid = groups(&text).find(|g| g.name == name)?.gid;
    let members = groups(&text)
        .filter(|g| g.name == name)
        .flat_map(|g| g.members)
        .map(str::to_owned)
        .collect();
    Some((gid, members))
}

/// The name of `uid` (its first entry) in the passwd file at `path`.
pub fn user_name(path: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    users(&text)
        .find(|u| u.uid == uid)
        .map(|u| u.name.to_owned())
}

/// The uid of user `name` (its first entry) in the passwd file at `path`.
pub fn user_id(path: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    users(&text).find(|u| u.name == name).map(|u| u.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "\
root:x:0:
# sudo:x:27:mallory
  #sudo:x:27:eve
sudo:x:27: alice ,,bob
broken:x:notanumber:carol
short:x:9
sudo:x:28:dave
";

    #[test]
    fn comments_malformed_lines_and_blanks_mean_nothing() {
        assert!(is_member(GROUP, "sudo", "alice"));
        assert!(is_member(GROUP, "sudo", "bob"));
        assert!(!is_member(GROUP, "sudo", "mallory"));
        assert!(!is_member(GROUP, "sudo", "eve"));
        assert!(!is_member(GROUP, "sudo", ""));
        assert!(!is_member(GROUP, "broken", "carol"));
        assert!(!is_member(GROUP, "short", ""));
        assert_eq!(groups(GROUP).count(), 3);
    }

    #[test]
    fn a_name_listed_twice_is_looked_up_by_its_first_entry_but_members_of_both_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("group");
        std::fs::write(&path, GROUP).unwrap();
        let (gid, members) = lookup_group(&path, "sudo").unwrap();
        assert_eq!(gid, 27);
        assert_eq!(members, ["alice", "bob", "dave"]);
        assert!(is_member(GROUP, "sudo", "dave"));
        assert_eq!(lookup_group(&path, "nobody"), None);
    }

    #[test]
    fn passwd_entries_need_seven_fields_and_numeric_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(
            &path,
            "#toor:x:0:0::/root:/bin/sh\nroot:x:0:0:root:/root:/bin/bash\nbad:x:1x:0::/:/bin/sh\nshort:x:5:5\nalice:x:1000:1000::/home/alice:/bin/bash\nroot2:x:0:0::/:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(user_name(&path, 0).as_deref(), Some("root"));
        assert_eq!(user_name(&path, 5), None);
        assert_eq!(user_id(&path, "alice"), Some(1000));
        assert_eq!(user_id(&path, "toor"), None);
        assert_eq!(user_id(&path, "bad"), None);
        let text = std::fs::read_to_string(&path).unwrap();
        let names: Vec<&str> = users(&text).map(|u| u.name).collect();
        assert_eq!(names, ["root", "alice", "root2"]);
    }
}
