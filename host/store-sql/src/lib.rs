//! The SQL both stores share: how an instance listing becomes statements
//! an index answers (`listing`), the columns of an instance row and how
//! stored rows decode into the model (`rows`). What a commit writes is not
//! here but in `duro_core::store::plan`, which knows no SQL; each backend
//! keeps only its driver calls and what its dialect says differently.

pub mod listing;
pub mod rows;
