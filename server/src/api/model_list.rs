//! `GET /v1/models` and `/v1/models/{id}`: the local models, the routes (with their tiers) and
//! the remote backends.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;

use crate::api::errors::ApiError;
use crate::api::local_model::LocalModel;
use crate::api::openai::{ModelCard, ModelList};
use crate::api::state::AppState;

fn model_card(state: &AppState, model: &LocalModel) -> ModelCard {
    ModelCard {
        id: model.id.clone(),
        object: "model",
        created: state.created,
        owned_by: "wick",
        max_model_len: Some(model.engine.limits().max_model_len),
        tiers: None,
    }
}

/// The local models, then each route (with its tiers' backend ids) and each remote backend.
fn model_cards(state: &AppState) -> Vec<ModelCard> {
    let mut cards: Vec<ModelCard> = state.models.iter().map(|m| model_card(state, m)).collect();
    if let Some(router) = &state.router {
        let mut routes: Vec<_> = router.routes.values().collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        for r in routes {
            cards.push(ModelCard {
                id: r.name.clone(),
                object: "model",
                created: state.created,
                owned_by: "wick-router",
                max_model_len: None,
                tiers: Some(r.tiers.iter().map(|t| t.backend.id.clone()).collect()),
            });
        }
        for b in router.backends.iter().filter(|b| b.is_remote()) {
            cards.push(ModelCard {
                id: b.model.clone(),
                object: "model",
                created: state.created,
                owned_by: "remote",
                max_model_len: None,
                tiers: None,
            });
        }
    }
    cards
}

pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: model_cards(&state),
    })
}

pub async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    model_cards(&state)
        .into_iter()
        .find(|c| c.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::model_not_found(&id))
}
