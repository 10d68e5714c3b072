// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

// toolgate's vendored copy: upstream's build script installs git hooks and reads the commit
// hash with `git rev-parse HEAD`, which inside toolgate's tree would report toolgate's commit.
// The hash names the upstream release and this patch set instead (see TOOLGATE.md).
fn main() {
    #[cfg(feature = "opa-runtime")]
    {
        let git_hash =
            std::env::var("GIT_HASH").unwrap_or_else(|_| "v0.14.1+toolgate".to_string());
        println!("cargo:rustc-env=GIT_HASH={git_hash}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
