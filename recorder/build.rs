//! Two things for the native libraries the recorder encodes with.
//!
//! - The binding of libx264 (`crate::encode::x264`): bindgen reads `x264.h` (Debian's
//!   libx264-dev; on Windows the one scripts/windows.sh builds into `FFMPEG_DIR`), so the
//!   parameter and picture structures have the layout of the library the recorder links.
//! - The Windows build's static FFmpeg, linked completely. There, FFmpeg and x264 are static
//!   libraries (scripts/windows.sh builds them from Debian's sources): ffmpeg-sys-next names
//!   FFmpeg's own libraries, but not x264 or the system library libavutil needs (bcrypt), and
//!   GNU ld resolves static libraries in one left-to-right pass. So the package's binaries and
//!   tests get every library again at the end, in a group the linker searches until nothing is
//!   left unresolved (only the tests use FFmpeg, to decode what the encoder wrote; from static
//!   libraries the binary takes just what it calls). Other targets link x264's shared library,
//!   and the tests FFmpeg's, which bring their dependencies.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=FFMPEG_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    let windows = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "windows");
    let ffmpeg_dir = std::env::var("FFMPEG_DIR").ok().filter(|_| windows);
    let mut bindings = bindgen::Builder::default()
        .header_contents("x264_wrap.h", "#include <stdint.h>\n#include <x264.h>\n")
        .allowlist_function("x264_.*")
        .allowlist_type("x264_.*")
        .allowlist_var("X264_.*")
        .layout_tests(false);
    if let Some(dir) = &ffmpeg_dir {
        bindings = bindings.clang_arg(format!("-I{dir}/include"));
    }
    if let (Ok(target), Ok(host)) = (std::env::var("TARGET"), std::env::var("HOST"))
        && target != host
    {
        bindings = bindings.clang_arg(format!("--target={target}"));
    }
    let bindings = bindings
        .generate()
        .expect("x264.h is readable (Debian package libx264-dev) and bindgen can parse it");
    // `x264_encoder_open` is a macro naming the build (`x264_encoder_open_164`), so that a
    // program cannot link a library of another build: the alias keeps that check.
    let mut text = bindings.to_string();
    let open = text
        .split("pub fn ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .find(|name| name.starts_with("x264_encoder_open_"))
        .expect("x264.h declares x264_encoder_open_<build>")
        .to_owned();
    text.push_str(&format!("\npub use self::{open} as x264_encoder_open;\n"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("x264.rs"), text).expect("OUT_DIR is writable");

    match ffmpeg_dir {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={dir}/lib");
            println!("cargo:rustc-link-arg=-Wl,--start-group");
            for lib in [
                "avformat", "avcodec", "swscale", "avutil", "x264", "bcrypt", "mingwex", "msvcrt",
                "kernel32",
            ] {
                println!("cargo:rustc-link-arg=-l{lib}");
            }
            println!("cargo:rustc-link-arg=-Wl,--end-group");
        }
        None => println!("cargo:rustc-link-lib=x264"),
    }
}
