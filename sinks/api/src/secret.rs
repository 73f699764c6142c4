//! `Secret`: a configuration value that must never reach a log line, an error message or a
//! `{:?}` dump (credentials, passwords, tokens). Its `Debug` prints `Secret(***)`, it has no
//! `Display`, and the value is read only through [`Secret::expose`], at the one place that hands
//! it to a client library. [`same_configuration`] compares two configurations secrets included
//! (a rotated password is a change) without the values leaving memory.

use serde::Deserialize;

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself; pass it straight to the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

thread_local! {
    /// Set only inside [`same_configuration`], on its own thread, while it formats.
    static COMPARING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if COMPARING.with(std::cell::Cell::get) {
            return formatter.debug_tuple("Secret").field(&self.0).finish();
        }
        formatter.write_str("Secret(***)")
    }
}

/// Whether two configurations are the same, secrets included: their `Debug` forms with secret
/// values shown, formatted and compared here and dropped (never logged, stored or returned).
pub fn same_configuration<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            COMPARING.with(|comparing| comparing.set(false));
        }
    }
    COMPARING.with(|comparing| comparing.set(true));
    let _reset = Reset;
    format!("{a:?}") == format!("{b:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(Secret(***))");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn configurations_differing_only_in_a_secret_are_not_the_same() {
        let (a, b) = (Some(Secret::new("old")), Some(Secret::new("rotated")));
        assert!(!same_configuration(&a, &b));
        assert!(same_configuration(&a, &a.clone()));
        assert_eq!(format!("{a:?}"), "Some(Secret(***))", "hidden again afterwards");
    }
}
