//! Every public error converts with `?` into `Box<dyn Error + Send + Sync>` (what `anyhow` and
//! most applications use), and carries its cause.

use std::error::Error;

type AnyError = Box<dyn Error + Send + Sync + 'static>;

fn assert_send_sync_error<E: Error + Send + Sync + 'static>() {}

#[test]
fn public_errors_are_send_sync_errors() {
    assert_send_sync_error::<tramway::runtime::JoinError>();
    assert_send_sync_error::<tramway::runtime::BlockOnError>();
    assert_send_sync_error::<tramway::runtime::SpawnError>();
    assert_send_sync_error::<tramway::runtime::BuildError>();
    assert_send_sync_error::<tramway::runtime::DomainError>();
    assert_send_sync_error::<tramway::runtime::RegisterError>();
    assert_send_sync_error::<tramway::jit::JitError>();
    assert_send_sync_error::<tramway::jit::ProbeError>();
    assert_send_sync_error::<tramway::jit::CallError>();
    assert_send_sync_error::<tramway::BuildError>();
}

fn join_a_panicking_task() -> Result<(), AnyError> {
    let tw = tramway::Builder::new().workers(1).build()?;
    tw.runtime.spawn(|| panic!("boom"))?.join()?;
    Ok(())
}

#[test]
fn a_task_panic_propagates_with_question_mark_and_keeps_its_message() {
    let err = join_a_panicking_task().unwrap_err();
    assert_eq!(err.to_string(), "the task panicked: boom");
    let join = err
        .downcast::<tramway::runtime::JoinError>()
        .expect("a JoinError");
    assert_eq!(join.panic_message(), Some("boom"));
    let tramway::runtime::JoinError::Panicked(payload) = *join else {
        panic!("not a panic")
    };
    assert_eq!(payload.into_inner().downcast_ref::<&str>(), Some(&"boom"));
}
