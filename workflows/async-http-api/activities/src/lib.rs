//! The async HTTP API example's activities. `Process` takes a while (a real
//! sleep: activities see the real clock).

use duro_sdk::{Error, Result};

fn validate(document: String) -> Result<String> {
    let document = document.trim().to_string();
    if document.is_empty() {
        return Err(Error::msg("the document is empty"));
    }
    Ok(document)
}

fn process(document: String) -> Result<String> {
    std::thread::sleep(std::time::Duration::from_millis(200));
    Ok(format!("processed {document}"))
}

duro_sdk::export_activities! {
    "Validate" => validate,
    "Process" => process,
}
