//! Compiles the mosquitto emulator plugin (tests/plugin) into a shared
//! object in OUT_DIR and exports its path as `FP_EMULATOR_PLUGIN`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const PLUGIN_SOURCE: &str = "plugin/fp_emulator_plugin.c";
const BROKER_HEADER: &str = "/usr/include/mosquitto_broker.h";
const PLUGIN_HEADER: &str = "/usr/include/mosquitto_plugin.h";

fn main() -> ExitCode {
    println!("cargo:rerun-if-changed={PLUGIN_SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");

    for header in [BROKER_HEADER, PLUGIN_HEADER] {
        if !Path::new(header).exists() {
            eprintln!(
                "error: {header} is missing, so the mosquitto emulator plugin cannot be built; \
                 run `apt-get install mosquitto mosquitto-dev`"
            );
            return ExitCode::FAILURE;
        }
    }

    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        eprintln!("error: OUT_DIR is not set; run this build script through cargo");
        return ExitCode::FAILURE;
    };
    let output = out_dir.join("fp_emulator_plugin.so");

    // cc picks the C compiler (CC, target settings), but it only builds
    // static archives, so the shared object is linked by running that
    // compiler directly.
    let compiler = cc::Build::new().get_compiler();
    let mut command = compiler.to_command();
    command
        .args([
            "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
        ])
        .arg(&output)
        .arg(PLUGIN_SOURCE);
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("error: compiling {PLUGIN_SOURCE} failed ({status}): {command:?}");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!(
                "error: the C compiler could not be started ({error}): {command:?}; \
                 install gcc or set CC"
            );
            return ExitCode::FAILURE;
        }
    }

    println!("cargo:rustc-env=FP_EMULATOR_PLUGIN={}", output.display());
    ExitCode::SUCCESS
}
