//! The gateway/sub-device rules over the real Admin service (#13 finding
//! 6): a device with sub-devices is not bound as a sub-device, a gateway
//! with sub-devices is not deleted, and an import neither moves a bound
//! sub-device to another gateway nor binds a device that has sub-devices.
//! Each refusal names what to do and writes nothing. (The same rules are
//! checked in every registry transaction: `registry_contract`.)

mod common;

use common::{fixture, status};
use enos_signer_proto::v1::{
    BindSubDeviceRequest, DeviceRef, ImportDevicesRequest, ImportRow, UnbindSubDeviceRequest,
};
use tonic::Code;

fn dref(pk: &str, dk: &str) -> Option<DeviceRef> {
    Some(DeviceRef {
        product_key: pk.into(),
        device_key: dk.into(),
    })
}

fn row(line: u32, pk: &str, dk: &str, gw: Option<(&str, &str)>) -> ImportRow {
    ImportRow {
        line,
        product_key: pk.into(),
        device_key: dk.into(),
        device_secret: format!("s3cret-{dk}"),
        gateway: gw.and_then(|(p, d)| dref(p, d)),
        awaiting_activation: false,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_gateway_with_sub_devices_is_neither_bound_nor_deleted() {
    let f = fixture().await;
    for dk in ["gw", "gw2", "sub"] {
        f.signer.put_device("Pk1", dk, "s3cret").await.expect("put");
    }
    f.signer
        .bind_sub_device(("Pk1", "gw"), ("Pk1", "sub"))
        .await
        .expect("bind");
    let mut admin = f.signer.admin().await;

    let refused = status(
        admin
            .bind_sub_device(BindSubDeviceRequest {
                gateway: dref("Pk1", "gw2"),
                sub_device: dref("Pk1", "gw"),
            })
            .await,
    );
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("Pk1/gw is the gateway of sub-devices (such as Pk1/sub)"),
        "{}",
        refused.message()
    );

    let refused = status(admin.delete_device(dref("Pk1", "gw").expect("ref")).await);
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("unbind or delete them first"),
        "{}",
        refused.message()
    );
    let gw = admin
        .get_device(dref("Pk1", "gw").expect("ref"))
        .await
        .expect("still there")
        .into_inner();
    assert_eq!(gw.gateway, None, "nothing changed");

    // Unbinding the sub-device frees the gateway.
    admin
        .unbind_sub_device(UnbindSubDeviceRequest {
            sub_device: dref("Pk1", "sub"),
        })
        .await
        .expect("unbind");
    admin
        .delete_device(dref("Pk1", "gw").expect("ref"))
        .await
        .expect("a gateway without sub-devices is deleted");
}

#[tokio::test]
async fn import_does_not_move_a_bound_sub_device_nor_bind_a_gateway() {
    let f = fixture().await;
    // The secrets the rows carry: a row with another secret is refused
    // on its own (#23 finding 15), which is not what this test is about.
    for dk in ["gw", "gw2", "sub", "sub2"] {
        f.signer
            .put_device("Pk1", dk, &format!("s3cret-{dk}"))
            .await
            .expect("put");
    }
    f.signer
        .bind_sub_device(("Pk1", "gw"), ("Pk1", "sub"))
        .await
        .expect("bind");
    let mut admin = f.signer.admin().await;
    let import = |rows: Vec<ImportRow>, dry_run: bool| ImportDevicesRequest {
        rows,
        dry_run,
        ..Default::default()
    };

    // Both refusals in one report, by line, on a dry run and a real one.
    for dry_run in [true, false] {
        let response = admin
            .import_devices(futures::stream::iter([import(
                vec![
                    row(2, "Pk1", "sub", Some(("Pk1", "gw2"))),
                    row(3, "Pk1", "gw", Some(("Pk1", "gw2"))),
                    row(4, "Pk1", "sub2", Some(("Pk1", "gw"))),
                ],
                dry_run,
            )]))
            .await
            .expect("import answers")
            .into_inner();
        assert!(
            !response.committed && response.imported == 0,
            "{response:?}"
        );
        let errors: Vec<(u32, &str)> = response
            .errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        // Line 4 binds under Pk1/gw, which line 3 would make a sub-device.
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0].0, 2);
        assert!(
            errors[0]
                .1
                .contains("bound to gateway Pk1/gw; unbind it first"),
            "{errors:?}"
        );
        assert_eq!(errors[1].0, 3);
        assert!(
            errors[1].1.contains("Pk1/gw is the gateway of sub-devices"),
            "{errors:?}"
        );
        assert_eq!(errors[2].0, 4);
        assert!(
            errors[2]
                .1
                .contains("gateway Pk1/gw is itself a sub-device"),
            "{errors:?}"
        );
    }
    let sub = admin
        .get_device(dref("Pk1", "sub").expect("ref"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(sub.gateway, dref("Pk1", "gw"), "still bound where it was");
    assert_eq!(sub.secret_version, 1, "and its secret not rotated");

    // Re-importing a sub-device under the gateway it has is fine, and so
    // is a row without gateway columns (it keeps its binding).
    let response = admin
        .import_devices(futures::stream::iter([import(
            vec![
                row(2, "Pk1", "sub", Some(("Pk1", "gw"))),
                row(3, "Pk1", "sub2", None),
            ],
            false,
        )]))
        .await
        .expect("import")
        .into_inner();
    assert!(
        response.committed && response.errors.is_empty(),
        "{response:?}"
    );
}
