//! Writes the git commit and the build date `spillway --version` prints into the
//! `SPILLWAY_GIT_COMMIT` and `SPILLWAY_BUILD_DATE` compile-time variables: `unknown` outside a git
//! checkout (a source tarball); `SPILLWAY_GIT_COMMIT` set at build time wins (a build without
//! `.git`), and `SOURCE_DATE_EPOCH` gives the date for reproducible builds.
//!
//! Runs again only when the checked-out commit changes (`.git/HEAD`, the branch ref it points
//! to, `packed-refs`) or those variables do, never on every build. The date is the day the
//! script last ran, i.e. the build of that commit.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SPILLWAY_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    for path in git_paths_to_watch() {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = std::env::var("SPILLWAY_GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SPILLWAY_GIT_COMMIT={commit}");
    let seconds =
        std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|epoch| epoch.trim().parse::<i64>().ok()).or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|now| now.as_secs() as i64)
        });
    let date = seconds.map_or_else(|| "unknown".to_string(), utc_date);
    println!("cargo:rustc-env=SPILLWAY_BUILD_DATE={date}");
}

/// Output of a git command run in the package folder, when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// `HEAD` and the branch ref it names, as paths git reports (worktrees keep HEAD apart from the
/// refs), or `packed-refs` when that ref is packed (then it is not a file of its own); only paths
/// that exist, since cargo re-runs a script on every build while a watched path is missing.
fn git_paths_to_watch() -> Vec<String> {
    let path_of = |name: &str| git(&["rev-parse", "--path-format=absolute", "--git-path", name]);
    let exists = |path: &String| std::path::Path::new(path).exists();
    let mut paths: Vec<String> = path_of("HEAD").into_iter().filter(exists).collect();
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        match path_of(&branch).filter(exists) {
            Some(loose) => paths.push(loose),
            None => paths.extend(path_of("packed-refs").filter(exists)),
        }
    }
    paths
}

/// `YYYY-MM-DD` of a Unix time in UTC (Howard Hinnant's days-to-civil algorithm).
fn utc_date(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
