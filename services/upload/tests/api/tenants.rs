//! Tenants: a tenant's token sees, lists and exports only its tenant's
//! uploads (another tenant's upload id answers 404), an operator's bare
//! token sees all, and the tenant is recorded on the upload and shown in
//! its status.

use rowpipe_testkit::{AppOptions, Backend, TestApp, spawn_app_with};
use serde_json::Value;

const ACME: &str = "acme-token";
const GLOBEX: &str = "globex-token";
const OPERATOR: &str = "operator-token";

async fn post(app: &TestApp, token: &str, key: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(token)
        .header("content-type", "text/csv");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(body.to_string()).send().await.expect("POST")
}

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, String) {
    let resp = app
        .client
        .get(format!("{}{path}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

fn listed(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).expect("json");
    v["uploads"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| u["upload_id"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn a_tenant_sees_only_its_own_uploads(backend: Backend) {
    let app = spawn_app_with(
        backend,
        AppOptions {
            auth_tokens: format!("acme={ACME},globex={GLOBEX},{OPERATOR}"),
            ..AppOptions::default()
        },
    )
    .await;
    let resp = post(
        &app,
        ACME,
        Some("k1"),
        "email\na@example.com\nnot-an-email\n",
    )
    .await;
    assert_eq!(resp.status().as_u16(), 202);
    let acme: Value = resp.json().await.expect("json");
    let acme_id = acme["upload_id"].as_str().expect("id").to_string();
    assert_eq!(acme["tenant"], "acme", "{acme}");
    let resp = post(&app, GLOBEX, None, "email\ng@example.com\n").await;
    assert_eq!(resp.status().as_u16(), 202);
    let globex_id = resp.json::<Value>().await.expect("json")["upload_id"]
        .as_str()
        .expect("id")
        .to_string();

    // Another tenant's id is not found, on the status and on every export.
    for path in [
        format!("/v1/uploads/{acme_id}"),
        format!("/v1/uploads/{acme_id}/rejects"),
        format!("/v1/uploads/{acme_id}/duplicates"),
    ] {
        let (status, body) = get(&app, GLOBEX, &path).await;
        assert_eq!(status, 404, "globex GET {path}: {body}");
        assert!(!body.contains("a@example.com"), "{body}");
        let (status, _) = get(&app, ACME, &path).await;
        assert_eq!(status, 200, "acme GET {path}");
        let (status, _) = get(&app, OPERATOR, &path).await;
        assert_eq!(status, 200, "operator GET {path}");
    }
    let (_, body) = get(&app, ACME, &format!("/v1/uploads/{acme_id}")).await;
    let status: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["tenant"], "acme");

    // Listings are filtered; the operator's is not.
    assert_eq!(
        listed(&get(&app, ACME, "/v1/uploads").await.1),
        vec![acme_id.clone()]
    );
    assert_eq!(
        listed(&get(&app, GLOBEX, "/v1/uploads").await.1),
        vec![globex_id.clone()]
    );
    assert_eq!(
        listed(&get(&app, OPERATOR, "/v1/uploads").await.1),
        vec![globex_id.clone(), acme_id.clone()]
    );

    // The same Idempotency-Key from another tenant is a new upload of its
    // own, not a replay of the first tenant's.
    let resp = post(&app, GLOBEX, Some("k1"), "email\nh@example.com\n").await;
    assert_eq!(resp.status().as_u16(), 202);
    let again: Value = resp.json().await.expect("json");
    assert_ne!(
        again["upload_id"].as_str(),
        Some(acme_id.as_str()),
        "{again}"
    );
    assert_eq!(again["tenant"], "globex");
    let resp = post(
        &app,
        ACME,
        Some("k1"),
        "email\na@example.com\nnot-an-email\n",
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200, "acme's own retry replays");
    app.cleanup().await;
}

rowpipe_testkit::on_databases!(a_tenant_sees_only_its_own_uploads: Sqlite, Postgres, MySql);
