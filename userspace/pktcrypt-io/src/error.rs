//! The I/O layer's error: what was being done, and why it failed, with the errno when the
//! kernel gave one.

use std::io;

/// What [`Result`] fails with.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// An error of the I/O layer: what was being done (its context: the step, the interface, the
/// map) and the cause, if there is one (a system call's [`io::Error`], an aya or netlink
/// error). [`Error::raw_os_error`] finds the errno anywhere in the chain of causes.
///
/// It displays as `context: cause` (or one of the two alone): the whole message, as callers
/// print it. [`std::error::Error::source`] gives the cause for code that looks at it.
#[derive(Debug)]
pub struct Error {
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error with no cause beyond its message (a missing map, a value out of range).
    pub(crate) fn msg(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            source: None,
        }
    }

    /// An error caused by `source`, while doing `context`.
    pub(crate) fn new(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// An error from a raw errno (xdpilone's), while doing `context`.
    pub(crate) fn errno(context: impl Into<String>, errno: i32) -> Self {
        Self::new(context, io::Error::from_raw_os_error(errno))
    }

    /// The same error inside a wider context (`outer: context: cause`).
    #[must_use]
    pub(crate) fn within(mut self, outer: impl core::fmt::Display) -> Self {
        self.context = if self.context.is_empty() {
            outer.to_string()
        } else {
            format!("{outer}: {}", self.context)
        };
        self
    }

    /// What was being done (empty for a bare system call error).
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The OS error code (errno) that caused this error, if one did: from the first
    /// [`io::Error`] in the chain of causes that carries one.
    pub fn raw_os_error(&self) -> Option<i32> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(e) = cause {
            if let Some(code) = e
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
            {
                return Some(code);
            }
            if let Some(errno) = e.downcast_ref::<rustix::io::Errno>() {
                return Some(errno.raw_os_error());
            }
            cause = e.source();
        }
        None
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (&self.source, self.context.is_empty()) {
            (Some(source), true) => write!(f, "{source}"),
            (Some(source), false) => write!(f, "{}: {source}", self.context),
            (None, _) => f.write_str(&self.context),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A bare system call error (no context: its message alone).
impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self {
            context: String::new(),
            source: Some(Box::new(e)),
        }
    }
}

/// The message, for callers whose errors are strings (the binary's).
impl From<Error> for String {
    fn from(e: Error) -> Self {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn displays_context_and_cause_and_keeps_the_errno() {
        let e = Error::errno("AF_XDP on veth0 queue 0: bind", 16);
        assert!(
            e.to_string()
                .starts_with("AF_XDP on veth0 queue 0: bind: Device or resource busy"),
            "{e}"
        );
        assert_eq!(e.raw_os_error(), Some(16));
        assert_eq!(e.context(), "AF_XDP on veth0 queue 0: bind");
        let e = e.within("outer");
        assert!(e.to_string().starts_with("outer: AF_XDP on"), "{e}");
        assert_eq!(e.raw_os_error(), Some(16));
        assert!(e.source().is_some());

        let plain = Error::msg("the object has no CONFIG map");
        assert_eq!(plain.to_string(), "the object has no CONFIG map");
        assert_eq!(plain.raw_os_error(), None);
        assert!(plain.source().is_none());

        let bare = Error::from(io::Error::from_raw_os_error(19));
        assert_eq!(
            bare.to_string(),
            io::Error::from_raw_os_error(19).to_string()
        );
        assert_eq!(bare.within("eth9").context(), "eth9");
        assert_eq!(String::from(Error::msg("m")), "m");
    }

    /// The errno is found below a cause that does not show it (as aya's `SyscallError`
    /// keeps its `io::Error` as a source only).
    #[test]
    fn finds_the_errno_deeper_in_the_chain() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl core::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("`bpf_map_update_elem` failed")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Error::new("XSKS map", Wrapper(io::Error::from_raw_os_error(1)));
        assert_eq!(e.to_string(), "XSKS map: `bpf_map_update_elem` failed");
        assert_eq!(e.raw_os_error(), Some(1));
        let e = Error::new("poll", rustix::io::Errno::INTR);
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::INTR.raw_os_error())
        );
    }
}
