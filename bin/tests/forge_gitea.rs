//! The Gitea forge client against a real Gitea (testbed): a pull request is created, a second
//! call finds and reuses it (never a second one), the create call's own 409 is resolved by
//! looking again, a base branch with `/` (which Gitea's by-base-and-head route cannot carry) is
//! found through the list, a closed pull request is not reused, and a wrong token is an auth
//! error that does not show it.

use guildnet_core::agent::forge::{
    Created, Forge, ForgeError, ForgeKind, ForgeSettings, GiteaForge, PullRequest,
};
use guildnet_core::token::Secret;
use guildnet_testbed::forge::{Gitea, GiteaRepo};
use serde_json::json;

async fn branch_with_commit(g: &Gitea, repo: &GiteaRepo, branch: &str, from: &str) {
    g.create_branch(repo, branch, from).await.unwrap();
    // A commit on the branch, so there is something to merge.
    use base64::Engine;
    let content = base64::engine::general_purpose::STANDARD.encode(format!("{branch}\n"));
    g.post(
        &format!(
            "/repos/{}/{}/contents/{}.txt",
            repo.owner,
            repo.name,
            branch.replace('/', "-")
        ),
        &json!({"content": content, "branch": branch, "message": format!("work on {branch}")}),
    )
    .await
    .unwrap();
}

fn pr(head: &str, base: &str) -> PullRequest {
    PullRequest {
        title: format!("Merge {head}"),
        head: head.into(),
        base: base.into(),
        body: "from the forge test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_pull_requests_are_created_once_and_reused() {
    let g = Gitea::start().await.expect("gitea");
    let repo = g.create_repo("forge-client", false).await.unwrap();
    let settings = ForgeSettings {
        kind: ForgeKind::Gitea,
        url: g.url().to_owned(),
        token: Secret::new(g.token()),
    };
    let path = settings
        .repo_path(&repo.clone_url)
        .expect("repo on the forge");
    assert_eq!(path, format!("{}/forge-client", repo.owner));
    let forge = settings.connect(&path).unwrap();
    assert_eq!(forge.kind(), ForgeKind::Gitea);
    assert_eq!(settings.whoami().await.unwrap(), repo.owner);

    // Created, then reused.
    branch_with_commit(&g, &repo, "guildnet/t-1", "main").await;
    let first = forge
        .open_pull_request(&pr("guildnet/t-1", "main"))
        .await
        .unwrap();
    assert!(!first.reused);
    assert_eq!(first.number, Some(1));
    assert_eq!(first.url, format!("{}/pulls/1", repo.html_url));
    let again = forge
        .open_pull_request(&pr("guildnet/t-1", "main"))
        .await
        .unwrap();
    assert!(again.reused);
    assert_eq!(again.url, first.url);
    assert_eq!(g.pulls(&repo).await.unwrap().len(), 1);

    // The create call alone answers Gitea's 409 for a duplicate.
    let raw = GiteaForge::new(&g.api(), &path, Secret::new(g.token())).unwrap();
    match raw.create(&pr("guildnet/t-1", "main")).await.unwrap() {
        Created::Conflict { status, message } => {
            assert_eq!(status, 409);
            assert!(!message.is_empty());
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(g.pulls(&repo).await.unwrap().len(), 1);

    // A base branch with '/' in it: found through the list of open pull requests.
    g.create_branch(&repo, "release/1.0", "main").await.unwrap();
    branch_with_commit(&g, &repo, "guildnet/t-2", "release/1.0").await;
    let rel = forge
        .open_pull_request(&pr("guildnet/t-2", "release/1.0"))
        .await
        .unwrap();
    assert!(!rel.reused);
    let rel2 = forge
        .open_pull_request(&pr("guildnet/t-2", "release/1.0"))
        .await
        .unwrap();
    assert!(rel2.reused);
    assert_eq!(rel2.url, rel.url);
    assert_eq!(g.pulls(&repo).await.unwrap().len(), 2);

    // A closed pull request is not reused: a new one is opened.
    let n = first.number.unwrap();
    let closed = reqwest::Client::new()
        .patch(format!(
            "{}/repos/{}/{}/pulls/{n}",
            g.api(),
            repo.owner,
            repo.name
        ))
        .header("Authorization", format!("token {}", g.token()))
        .json(&json!({"state": "closed"}))
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success());
    let reopened = forge
        .open_pull_request(&pr("guildnet/t-1", "main"))
        .await
        .unwrap();
    assert!(!reopened.reused);
    assert_ne!(reopened.url, first.url);
    // With a closed and an open one for the same branches, the open one is found.
    let third = forge
        .open_pull_request(&pr("guildnet/t-1", "main"))
        .await
        .unwrap();
    assert!(third.reused);
    assert_eq!(third.url, reopened.url);
    assert_eq!(g.pulls(&repo).await.unwrap().len(), 3);

    // A wrong token: an auth error, without the token.
    let wrong = "0123456789abcdef0123456789abcdef01234567";
    let bad = GiteaForge::new(&g.api(), &path, Secret::new(wrong)).unwrap();
    let e = bad
        .open_pull_request(&pr("guildnet/t-1", "main"))
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Auth { status: 401, .. }), "{e:?}");
    assert!(!e.to_string().contains(wrong));
    let who = ForgeSettings {
        token: Secret::new(wrong),
        ..settings.clone()
    }
    .whoami()
    .await
    .unwrap_err();
    assert!(
        matches!(who, ForgeError::Auth { status: 401, .. }),
        "{who:?}"
    );
}
