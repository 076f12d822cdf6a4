//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! Not decoded yet: the body gets a clear 415 so that the client says what happened instead of
//! storing something wrong.

use serde_json::Value;

use crate::error::{ApiError, ApiResult};

pub fn decode(_body: &[u8]) -> ApiResult<Value> {
    Err(ApiError::UnsupportedMediaType(
        "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (protobuf request bodies are not supported by this server yet)".into(),
    ))
}
