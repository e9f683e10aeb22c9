//! The human-interaction example's activities. A real app would send an
//! email or a chat message here; these only say what they would send.

fn request_approval(instance: String) -> duro_sdk::Result<String> {
    Ok(format!(
        "asked for approval: POST /api/approvals/{instance}/approve or /reject"
    ))
}

fn escalate(instance: String) -> duro_sdk::Result<String> {
    Ok(format!("escalated {instance} to a manager"))
}

duro_sdk::export_activities! {
    "RequestApproval" => request_approval,
    "Escalate" => escalate,
}
