//! The Rust client `async-openai` against the real `wick serve`: models, chat (non-streaming and
//! streaming give the same text), seeded n = 2, completions with two prompts, and an OpenAI error
//! object the client parses.

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::Client;
use futures_util::StreamExt;
use wick_tests::Server;

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";
const KEY: &str = "rust-client-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_openai_client_against_wick_serve() {
    let server = tokio::task::spawn_blocking(|| Server::start(&["--api-key", KEY]))
        .await
        .expect("server starts");
    // The workspace builds reqwest with rustls but without a built-in crypto provider (wick
    // installs ring: server/src/http_client.rs), and async-openai's client is that reqwest.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = OpenAIConfig::new()
        .with_api_base(format!("http://127.0.0.1:{}/v1", server.port))
        .with_api_key(KEY);
    let client = Client::with_config(config);

    let models = client.models().list().await.expect("models");
    assert_eq!(
        models.data.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [MODEL]
    );

    let user = ChatCompletionRequestUserMessageArgs::default()
        .content("Name three fruits.")
        .build()
        .expect("message");
    let request = CreateChatCompletionRequestArgs::default()
        .model(MODEL)
        .messages([user.into()])
        .max_completion_tokens(16u32)
        .temperature(0.0)
        .build()
        .expect("request");
    let full = client.chat().create(request.clone()).await.expect("chat");
    let text = full.choices[0].message.content.clone().unwrap_or_default();
    assert!(!text.is_empty());
    let used = full.usage.as_ref().map_or(0, |u| u.completion_tokens);
    assert!((1..=16).contains(&used), "{used} completion tokens for max 16");

    let mut stream = client
        .chat()
        .create_stream(request.clone())
        .await
        .expect("stream");
    let (mut streamed, mut finishes) = (String::new(), 0);
    while let Some(chunk) = stream.next().await {
        for choice in chunk.expect("chunk").choices {
            streamed.push_str(choice.delta.content.as_deref().unwrap_or(""));
            finishes += usize::from(choice.finish_reason.is_some());
        }
    }
    assert_eq!(streamed, text, "streamed text differs from the non-streamed one");
    assert_eq!(finishes, 1);

    let mut seeded = request.clone();
    // `seed` is deprecated at OpenAI but part of the API wick serves (same seed, same output).
    #[allow(deprecated)]
    {
        (seeded.n, seeded.seed, seeded.temperature) = (Some(2), Some(99), Some(1.0));
    }
    let a = client.chat().create(seeded.clone()).await.expect("seeded");
    let b = client.chat().create(seeded).await.expect("seeded again");
    let texts = |r: &async_openai::types::chat::CreateChatCompletionResponse| {
        r.choices
            .iter()
            .map(|c| c.message.content.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(a.choices.len(), 2);
    assert_eq!(texts(&a), texts(&b), "same seed, same choices");

    let completion = CreateCompletionRequestArgs::default()
        .model(MODEL)
        .prompt(vec!["The sky is", "Water boils at"])
        .max_tokens(8u32)
        .temperature(0.0)
        .build()
        .expect("completion request");
    let out = client
        .completions()
        .create(completion)
        .await
        .expect("completions");
    let mut indices: Vec<u32> = out.choices.iter().map(|c| c.index).collect();
    indices.sort_unstable();
    assert_eq!(indices, [0, 1]);

    let mut unknown = request;
    unknown.model = "no-such-model".into();
    match client.chat().create(unknown).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 404);
            assert_eq!(e.api_error.code.as_deref(), Some("model_not_found"));
            assert_eq!(e.api_error.param.as_deref(), Some("model"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    drop(server);
}
