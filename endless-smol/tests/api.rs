//! Every type the API's signatures use is nameable through `endless_smol` alone (a compile
//! test: a missing re-export fails the build), and a listener's error says which.

/// The types, named through this crate.
#[allow(dead_code, clippy::too_many_arguments)]
fn nameable(
    _: endless_smol::Exit,
    _: endless_smol::ExitReason,
    _: endless_smol::DrainCause,
    _: endless_smol::AdoptError,
    _: endless_smol::TakeError,
    _: endless_smol::StartError,
    _: endless_smol::Event,
    _: endless_smol::StateError,
) -> Result<endless_smol::Restarted, endless_smol::RestartError> {
    endless_smol::control::restart(
        std::path::Path::new("/run/server.pid"),
        endless_smol::control::DEFAULT_TIMEOUT,
    )
}

#[test]
fn a_listener_error_names_the_listener_and_the_address() {
    smol::block_on(async {
        let endless = endless_smol::Endless::start().unwrap();
        let err = endless
            .tcp_listener("http", "localhost:http-alt-x")
            .unwrap_err();
        assert!(
            matches!(err, endless_smol::ListenError::Resolve { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(r#"listener "http": cannot resolve "localhost:http-alt-x""#),
            "{err}"
        );
        let err = endless
            .tcp_listener("endless.mine", "127.0.0.1:0")
            .unwrap_err();
        assert!(
            matches!(err, endless_smol::ListenError::ReservedName { .. }),
            "{err:?}"
        );
        endless.ready();
        endless.request(endless_smol::Request::Stop);
        assert_eq!(endless.run().await.code, 0);
    });
}
