//! Compile the vendored libdeflate compressor (see PATCH.diff for the one change made to it).

fn main() {
    let sources = [
        "libdeflate/lib/deflate_compress.c",
        "libdeflate/lib/utils.c",
        "libdeflate/lib/x86/cpu_features.c",
        "libdeflate/lib/arm/cpu_features.c",
    ];
    for source in sources.iter().chain(&["libdeflate/libdeflate.h"]) {
        println!("cargo:rerun-if-changed={source}");
    }
    cc::Build::new().files(sources).include("libdeflate").opt_level(2).warnings(false).compile("deflate_sync");
}
