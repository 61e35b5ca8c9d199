//! Compile-time memory of the core: prints and bounds the size of the state
//! machine and of every buffer a host needs for one provisioning run.
//!
//! Each type is bounded twice. First, by a formula over the capacity
//! constants it is built from, plus a few machine words of lengths and
//! discriminants, so that no buffer hides outside the named constants.
//! Second, by a fixed byte budget, so that raising a constant (or adding a
//! buffer) fails here and the new figure has to be written into
//! BENCHMARKS.md deliberately. Run with `--nocapture` to see the table.

use core::mem::size_of;

use fleet_provisioning_core::checkpoint::{Checkpoint, MAX_CHECKPOINT_LEN};
use fleet_provisioning_core::eventstream::MAX_FRAME_LEN;
use fleet_provisioning_core::fleet::{
    CertificateIssued, FleetError, Rejection, TemplateParameters, ThingRegistered, Topic,
    MAX_CERTIFICATE_ID_LEN, MAX_CERTIFICATE_PEM_LEN, MAX_CSR_PEM_LEN, MAX_ERROR_CODE_LEN,
    MAX_ERROR_MESSAGE_LEN, MAX_OWNERSHIP_TOKEN_LEN, MAX_PARAMETERS, MAX_PARAMETER_KEY_LEN,
    MAX_PARAMETER_VALUE_LEN, MAX_REQUEST_PAYLOAD_LEN, MAX_TEMPLATE_NAME_LEN, MAX_THING_NAME_LEN,
    MAX_TOPIC_LEN,
};
use fleet_provisioning_core::machine::{Failure, Provisioner};

const WORD: usize = size_of::<usize>();

/// Byte budget of the state machine: 49,880 bytes on x86_64, less on 32-bit
/// targets, whose length words are smaller. Raise it only together with the
/// `Core RAM` section of BENCHMARKS.md.
const PROVISIONER_BUDGET: usize = 49 * 1024;

/// Byte budget of everything a host holds for one run: the machine, one
/// core-bus frame buffer for receiving and one for sending, and the
/// checkpoint buffer (76,429 bytes on x86_64).
const RUN_BUDGET: usize = 75 * 1024;

/// Bytes a host needs besides the machine: a receive and a send buffer of
/// [`MAX_FRAME_LEN`] for core-bus frames, and one of [`MAX_CHECKPOINT_LEN`]
/// for reading and writing the checkpoint record.
const HOST_BUFFERS: usize = 2 * MAX_FRAME_LEN + MAX_CHECKPOINT_LEN;

/// Rounds `bytes` up to a multiple of the word size, as a struct of
/// byte arrays and length words is padded.
const fn padded(bytes: usize) -> usize {
    bytes.div_ceil(WORD) * WORD
}

/// Bound for a `heapless::String<N>` or `heapless::Vec<u8, N>`: its bytes
/// and a length word.
const fn string_bound(capacity: usize) -> usize {
    padded(capacity) + WORD
}

fn print_row(name: &str, bytes: usize) {
    println!("{name:<42} {bytes:>7} B {:>8.1} KiB", bytes as f64 / 1024.0);
}

#[test]
fn buffer_types_hold_only_their_capacities() {
    let certificate_bound = string_bound(MAX_CERTIFICATE_ID_LEN)
        + string_bound(MAX_CERTIFICATE_PEM_LEN)
        + string_bound(MAX_OWNERSHIP_TOKEN_LEN);
    let parameters_bound = MAX_PARAMETERS
        * (string_bound(MAX_PARAMETER_KEY_LEN) + string_bound(MAX_PARAMETER_VALUE_LEN))
        + 2 * WORD;
    let rejection_bound =
        string_bound(MAX_ERROR_CODE_LEN) + string_bound(MAX_ERROR_MESSAGE_LEN) + WORD;

    let rows: [(&str, usize, usize); 7] = [
        ("Topic", size_of::<Topic>(), string_bound(MAX_TOPIC_LEN)),
        (
            "CertificateIssued",
            size_of::<CertificateIssued>(),
            certificate_bound,
        ),
        (
            "ThingRegistered",
            size_of::<ThingRegistered>(),
            string_bound(MAX_THING_NAME_LEN),
        ),
        ("Rejection", size_of::<Rejection>(), rejection_bound),
        (
            "TemplateParameters",
            size_of::<TemplateParameters>(),
            parameters_bound,
        ),
        // The largest variant contains a rejection, and the others are small.
        ("Failure", size_of::<Failure>(), rejection_bound + 2 * WORD),
        (
            "Checkpoint",
            size_of::<Checkpoint>(),
            32 + string_bound(MAX_TEMPLATE_NAME_LEN)
                + certificate_bound
                + 8
                + string_bound(MAX_THING_NAME_LEN)
                + 4 * WORD,
        ),
    ];
    for (name, size, bound) in rows {
        print_row(name, size);
        assert!(
            size <= bound,
            "{name} is {size} bytes, more than the {bound} its capacity constants allow"
        );
    }
    // Errors travel by value through every layer, so they stay small.
    assert!(size_of::<FleetError>() <= 64, "FleetError grew");
}

#[test]
fn provisioner_is_its_buffers() {
    let buffers = 2 * size_of::<Topic>()
        + size_of::<TemplateParameters>()
        + string_bound(MAX_CSR_PEM_LEN)
        + string_bound(MAX_REQUEST_PAYLOAD_LEN)
        + size_of::<Option<CertificateIssued>>()
        + size_of::<Option<ThingRegistered>>()
        + size_of::<Option<Failure>>();
    let size = size_of::<Provisioner>();
    print_row("Provisioner", size);
    print_row("  of which buffers", buffers);
    assert!(
        size >= buffers,
        "Provisioner ({size} B) is smaller than its buffers ({buffers} B): update this test"
    );
    // State, timeouts, flags and two times.
    let bookkeeping = size - buffers;
    assert!(
        bookkeeping <= 64,
        "Provisioner has {bookkeeping} bytes besides its buffers; a new buffer needs a named \
         capacity and a line in BENCHMARKS.md"
    );
    assert!(
        size <= PROVISIONER_BUDGET,
        "Provisioner is {size} bytes, over its budget of {PROVISIONER_BUDGET}"
    );
}

#[test]
fn one_run_fits_budget() {
    let total = size_of::<Provisioner>() + HOST_BUFFERS;
    print_row("core-bus receive frame buffer", MAX_FRAME_LEN);
    print_row("core-bus send frame buffer", MAX_FRAME_LEN);
    print_row("checkpoint buffer", MAX_CHECKPOINT_LEN);
    print_row("one provisioning run", total);
    assert!(
        total <= RUN_BUDGET,
        "one run needs {total} bytes, over its budget of {RUN_BUDGET}"
    );
}
