//! The jq engine shared by partition keys and jq transforms: compiling an expression with jaq
//! (jq's standard library included) into a filter, with jq-style error messages.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, data};
use jaq_json::Val;

pub type JqFilter = jaq_core::Filter<data::JustLut<Val>>;

/// Compile `code`; on failure, every problem jaq found, with byte offsets into `code`.
pub fn compile_jq(code: &str) -> Result<JqFilter, String> {
    compile_jq_with_globals(code, &[])
}

/// The same with global variables (`$name`, in order) whose values each run passes to
/// `Vars::new`, in the same order.
pub fn compile_jq_with_globals(code: &str, globals: &[&str]) -> Result<JqFilter, String> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader.load(&arena, File { code, path: () }).map_err(|errors| {
        let messages: Vec<String> = errors.iter().flat_map(|(_, error)| load_error_messages(code, error)).collect();
        messages.join("; ")
    })?;
    Compiler::default().with_funs(funs).with_global_vars(globals.iter().copied()).compile(modules).map_err(|errors| {
        let messages: Vec<String> = errors
            .iter()
            .flat_map(|(_, undefined)| undefined.iter())
            .map(|(name, kind)| format!("undefined {} `{name}`", kind.as_str()))
            .collect();
        messages.join("; ")
    })
}

fn load_error_messages(code: &str, error: &jaq_core::load::Error<&str>) -> Vec<String> {
    use jaq_core::load::Error;
    match error {
        Error::Io(items) => items.iter().map(|(path, message)| format!("cannot load `{path}`: {message}")).collect(),
        Error::Lex(items) => items
            .iter()
            .map(|(expected, at)| format!("expected {} at byte {}", expected.as_str(), offset_in(code, at)))
            .collect(),
        Error::Parse(items) => items
            .iter()
            .map(|(expected, at)| format!("expected {} at byte {}", expected.as_str(), offset_in(code, at)))
            .collect(),
    }
}

/// Where `rest` (a suffix of `code`, as jaq reports positions) starts.
fn offset_in(code: &str, rest: &str) -> usize {
    code.len().saturating_sub(rest.len())
}

/// `error("boom")` reads `boom`, not `"boom"`.
pub fn jq_error_text(error: jaq_json::Error) -> String {
    match error.into_val() {
        Val::TStr(text) => String::from_utf8_lossy(&text).into_owned(),
        other => other.to_string(),
    }
}
