//! The fan-out example's one activity.

fn square(i: i64) -> duro_sdk::Result<i64> {
    i.checked_mul(i)
        .ok_or_else(|| duro_sdk::Error::msg(format!("{i} squared overflows")))
}

duro_sdk::export_activities! {
    "Square" => square,
}
