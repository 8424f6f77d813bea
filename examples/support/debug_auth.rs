use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use subtle::ConstantTimeEq as _;

/// `/debug/bg` and `/debug/bg.json` for `bg`, answering 401 unless the
/// request carries `Authorization: Bearer <token>`.
pub fn protected_debug_router(bg: bg_queue::BackgroundTx, token: Arc<str>) -> Router {
    bg_queue::DebugPage::new()
        .pool(bg)
        .router()
        .route_layer(middleware::from_fn_with_state(token, require_bearer))
}

async fn require_bearer(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant time: the answer's timing says nothing about how much of a
    // guess was right.
    if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response()
    }
}
