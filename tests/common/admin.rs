//! Admin helpers: stock as the admin principal, forced unlocks.

use super::*;

/// Sets a record's stock as the admin principal of the [`TOKENS`] file.
pub async fn stock_as_root(
    client: &mut InventoryServiceClient<AuthedChannel>,
    sku: &str,
    warehouse: &str,
    physical: &str,
) {
    let request = pb::SetStockRequest {
        sku: sku.into(),
        warehouse_id: warehouse.into(),
        physical: physical.into(),
        source_version: 1,
        ..Default::default()
    };
    client.set_stock(request).await.expect("set_stock as root");
}

/// Force-unlocks `target` with authentication off: alice requests, bob approves.
pub async fn force_unlock(svc: &TestService, target: pb::lock_selector::Target) {
    let mut admin = svc.admin().await;
    let request = pb::RequestForceUnlockRequest {
        selector: Some(pb::LockSelector { target: Some(target) }),
        reason: "test".into(),
        request_id: "fu".into(),
        operator: "alice".into(),
    };
    let pending = admin.request_force_unlock(request).await.unwrap().into_inner().request.unwrap();
    let approve = pb::ApproveForceUnlockRequest {
        id: pending.id,
        comment: String::new(),
        request_id: "ap".into(),
        operator: "bob".into(),
    };
    admin.approve_force_unlock(approve).await.unwrap();
}
