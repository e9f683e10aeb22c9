//! The chaining example's one activity.

fn say_hello(city: String) -> duro_sdk::Result<String> {
    Ok(format!("Hello {city}!"))
}

duro_sdk::export_activities! {
    "SayHello" => say_hello,
}
