//! Containing a panic where it happens: the last line of defence that keeps one record's or one
//! batch's bug from taking a stream, or the process, down. A panic caught here becomes an
//! ordinary error naming it ("internal error: …"), which the pipeline treats as the record's or
//! the batch's own: set aside in the error output with that reason, the stream going on.
//!
//! It contains unwinding panics only: a stack overflow aborts the process before anything can
//! catch it, which is why nesting depth is bounded before parsing (see [`crate::json_depth`]).
//!
//! Must not: retry, log, or decide where the records go.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Run `work`, turning a panic into its message. The caller must treat whatever `work` touched
/// as suspect afterwards (it may have been left half-changed): drop it or set it aside.
pub fn catch_panic<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| panic_message(payload.as_ref()))
}

/// The message a panic was raised with (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        return (*text).to_string();
    }
    if let Some(text) = payload.downcast_ref::<String>() {
        return text.clone();
    }
    "a panic without a message".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_a_value_passes_through() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        assert_eq!(catch_panic(|| -> u8 { panic!("boom {}", 42) }), Err("boom 42".to_string()));
        assert_eq!(catch_panic(|| -> u8 { panic!("static") }), Err("static".to_string()));
        assert_eq!(catch_panic(|| std::panic::panic_any(3u8)), Err("a panic without a message".to_string()));
    }
}
