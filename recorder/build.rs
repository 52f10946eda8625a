//! Links the Windows build's static FFmpeg completely. There, FFmpeg and x264 are static
//! libraries (scripts/windows.sh builds them from Debian's sources): ffmpeg-sys-next names
//! FFmpeg's own libraries, but not x264 or the system library libavutil needs (bcrypt), and GNU
//! ld resolves static libraries in one left-to-right pass. So the package's binaries and tests
//! get every library again at the end, in a group the linker searches until nothing is left
//! unresolved. Other targets link FFmpeg's shared libraries, which bring their dependencies.

fn main() {
    println!("cargo:rerun-if-env-changed=FFMPEG_DIR");
    let windows = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "windows");
    if let (true, Ok(dir)) = (windows, std::env::var("FFMPEG_DIR")) {
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
}
