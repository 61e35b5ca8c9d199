//! Starts the loopback test bed, runs the real `fleet-provisioning` binary
//! against it once, and prints what it provisioned. `cargo xtask demo` runs
//! this after building the binaries.

use fleet_provisioning_testbed::bed::TestBed;
use std::path::PathBuf;
use std::process::ExitCode;

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let path = exe.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing; build it with `cargo build -p fleet-provisioning-testbed --bins`",
            path.display()
        ))
    }
}

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo: {message}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<(), String> {
    let iotcored = sibling("iotcored")?;
    println!("Starting the test bed: test CA, mosquitto with mutual TLS on 127.0.0.1, IoT Core emulator, gg_config stand-in");
    let bed = TestBed::start("DEMO-0001", &iotcored)?;
    println!("  broker:        127.0.0.1:{}", bed.broker.port());
    println!("  core-bus dir:  {}", bed.socket_dir.display());
    println!("  output folder: {}", bed.output_dir.display());
    println!();
    println!("Running {} ...", bed.fleet_provisioning.display());
    let started = std::time::Instant::now();
    let result = bed.run(&[]);
    let elapsed = started.elapsed();
    print!("{}", result.log);
    if result.code != Some(0) {
        return Err(format!("fleet-provisioning exited with {:?}", result.code));
    }
    let text = |path: &str| {
        bed.config_value(path)
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_else(|| "(not set)".to_owned())
    };
    println!();
    println!("Provisioned in {} ms:", elapsed.as_millis());
    println!("  thing name:       {}", text("system/thingName"));
    println!("  certificate:      {}", text("system/certificateFilePath"));
    println!("  private key:      {}", text("system/privateKeyPath"));
    println!("  root CA:          {}", text("system/rootCaPath"));
    println!(
        "  data endpoint:    {}",
        text("services/aws.greengrass.NucleusLite/configuration/iotDataEndpoint")
    );
    let issued = bed.emulator.issued_certificates();
    if let Some(certificate) = issued.first() {
        println!("  certificate id:   {}", certificate.id);
    }
    println!();
    println!("Running it again: a provisioned device is left alone.");
    let again = bed.run(&[]);
    print!("{}", again.log);
    if again.code != Some(0) {
        return Err(format!("the second run exited with {:?}", again.code));
    }
    Ok(())
}
