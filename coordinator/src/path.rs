//! Znode path rules, as Apache ZooKeeper's `PathUtils.validatePath` applies them, and the small
//! path helpers the data tree needs.

/// Checks a path; `sequential` paths are checked with a digit appended, so `/queue/` is a valid
/// prefix for a sequential create, as in ZooKeeper. Returns the reason for an invalid path.
pub fn validate(path: &str, sequential: bool) -> Result<(), &'static str> {
    if sequential {
        let mut p = String::with_capacity(path.len() + 1);
        p.push_str(path);
        p.push('1');
        return validate_plain(&p);
    }
    validate_plain(path)
}

fn validate_plain(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("path length must be > 0");
    }
    if !path.starts_with('/') {
        return Err("path must start with / character");
    }
    if path.len() == 1 {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err("path must not end with / character");
    }
    let chars: Vec<char> = path.chars().collect();
    for i in 1..chars.len() {
        let c = chars[i];
        let last = chars[i - 1];
        let next_is_end = i + 1 == chars.len() || chars[i + 1] == '/';
        if c == '\0' {
            return Err("null character not allowed");
        }
        if c == '/' && last == '/' {
            return Err("empty node name specified");
        }
        if c == '.' && last == '.' && i >= 2 && chars[i - 2] == '/' && next_is_end {
            return Err("relative paths not allowed");
        }
        if c == '.' && last == '/' && next_is_end {
            return Err("relative paths not allowed");
        }
        // Java checks UTF-16 code units: every character outside the BMP is a surrogate pair,
        // which falls in the refused U+D800..U+F8FF range.
        let u = c as u32;
        if (0x01..=0x1f).contains(&u) || (0x7f..=0x9f).contains(&u) || (0xd800..=0xf8ff).contains(&u) || u >= 0xfff0 {
            return Err("invalid character");
        }
    }
    Ok(())
}

/// The parent of a valid path other than `/`.
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "/",
    }
}

/// The last component of a valid path (empty for `/`).
pub fn name(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Joins a parent path and a child name.
pub fn join(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{parent}/{child}")
    }
}

/// Whether `path` is `root` or lies below it.
pub fn is_within(path: &str, root: &str) -> bool {
    root == "/" || path == root || (path.starts_with(root) && path.as_bytes().get(root.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_zookeeper_accepts() {
        for p in ["/", "/a", "/a/b", "/a.b", "/...", "/a/..b", "/zookeeper/quota", "/é"] {
            assert_eq!(validate(p, false), Ok(()), "{p}");
        }
        assert_eq!(validate("/queue/", true), Ok(()));
        assert_eq!(validate("/queue/item-", true), Ok(()));
    }

    #[test]
    fn refuses_what_zookeeper_refuses() {
        for p in [
            "",
            "a",
            "/a/",
            "//",
            "/a//b",
            "/.",
            "/..",
            "/a/./b",
            "/a/../b",
            "/a\0",
            "/a\u{1}",
            "/\u{7f}",
            "/\u{e000}",
            "/\u{1F600}",
            "/\u{fff0}",
        ] {
            assert!(validate(p, false).is_err(), "{p:?} should be invalid");
        }
        assert!(validate("/a//", true).is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(name("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert!(is_within("/a/b", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/x", "/"));
    }
}
