//! `kubectl hookrelay <TAB>`: kubectl (1.26+) asks an executable named
//! `kubectl_complete-hookrelay` on PATH for the words that may come next,
//! passing the plugin's arguments with the word being typed last, and reads
//! one candidate per line (`word<TAB>description`) and a last line
//! `:<directive>` (Cobra's protocol). Candidates come from the command line's
//! own definition, so they cannot drift from it.

use clap::{Arg, Command};

/// Cobra's ShellCompDirectiveNoFileComp: offer no file names instead.
const NO_FILES: u32 = 4;
/// Cobra's ShellCompDirectiveDefault: let the shell complete file names.
const FILES: u32 = 0;

/// Which objects' names may be the word being completed, and where to
/// read them (the `-n`, `--context`, `--kubeconfig` typed so far).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Names {
    pub(super) kind: &'static str,
    pub(super) namespace: Option<String>,
    pub(super) context: Option<String>,
    pub(super) kubeconfig: Option<String>,
}

/// What to print for `args` (the last one is the word being completed), and
/// the objects whose names complete it, if any (read from the cluster by
/// the caller and printed before the rest).
pub(super) fn complete(command: &Command, args: &[String]) -> (String, Option<Names>) {
    let (typed, word) = match args.split_last() {
        Some((word, typed)) => (typed, word.as_str()),
        None => (&[][..], ""),
    };
    let mut current = command;
    let mut globals: Vec<&Arg> = command.get_arguments().filter(|a| a.is_global_set()).collect();
    let mut pending_value: Option<&Arg> = None;
    let mut names = Names::default();
    let mut positionals = 0;
    for arg in typed {
        if let Some(flag) = pending_value.take() {
            let value = Some(arg.clone());
            match flag.get_id().as_str() {
                "namespace" => names.namespace = value,
                "context" => names.context = value,
                "kubeconfig" => names.kubeconfig = value,
                _ => {}
            }
            continue;
        }
        if arg.starts_with('-') {
            if !arg.contains('=')
                && let Some(flag) = find_flag(current, &globals, arg)
                && flag.get_action().takes_values()
            {
                pending_value = Some(flag);
            }
            continue;
        }
        if let Some(sub) = current.find_subcommand(arg) {
            current = sub;
            globals.extend(current.get_arguments().filter(|a| a.is_global_set()));
        } else {
            positionals += 1;
        }
    }
    let mut out = String::new();
    let mut directive = NO_FILES;
    if let Some(flag) = pending_value {
        // The word is a flag's value.
        let values = flag.get_possible_values();
        if values.is_empty() {
            directive = if takes_path(flag) { FILES } else { NO_FILES };
        }
        for value in values.iter().filter(|v| !v.is_hide_set()) {
            line(&mut out, value.get_name(), value.get_help().map(ToString::to_string));
        }
        if flag.get_id() == "output" {
            for format in ["table", "wide", "json", "yaml", "name", "jsonpath="] {
                line(&mut out, format, None);
            }
        }
    } else if word.starts_with('-') {
        let flags = current.get_arguments().chain(globals.iter().copied());
        for flag in flags.filter(|a| !a.is_hide_set() && !a.is_positional()) {
            if let Some(long) = flag.get_long() {
                line(&mut out, &format!("--{long}"), flag.get_help().map(first_line));
            }
        }
    } else if current.has_subcommands() {
        for sub in current.get_subcommands().filter(|s| !s.is_hide_set()) {
            line(&mut out, sub.get_name(), sub.get_about().map(first_line));
        }
    } else if current.get_positionals().any(takes_path) {
        directive = FILES;
    } else {
        // A positional with fixed values (the shell of `completion`).
        for value in current.get_positionals().flat_map(|p| p.get_possible_values()) {
            line(&mut out, value.get_name(), value.get_help().map(ToString::to_string));
        }
        // Or the name of an object: the first positional of each command
        // names one (several, for redeliver).
        let slot = current.get_positionals().nth(positionals).or_else(|| {
            current
                .get_positionals()
                .last()
                .filter(|p| p.get_num_args().is_some_and(|n| n.max_values() > 1))
        });
        names.kind = match slot.map(|p| p.get_id().as_str()) {
            Some("webhook") => "webhooks",
            Some("hub") => "hubs",
            Some("delivery" | "deliveries") => "deliveries",
            _ => "",
        };
    }
    out.push_str(&format!(":{directive}\n"));
    (out, (!names.kind.is_empty()).then_some(names))
}

/// The names of `names.kind` in the namespace, one per line, or nothing
/// when the cluster does not answer within two seconds (completion must
/// never hang a shell).
pub(super) async fn names_from_cluster(names: &Names) -> String {
    let read = async {
        let (client, default_namespace) = crate::kubernetes::user_client(
            names.kubeconfig.as_deref().map(std::path::Path::new),
            names.context.clone(),
        )
        .await
        .ok()?;
        let namespace = names.namespace.clone().unwrap_or(default_namespace);
        let (group, version) = match names.kind {
            // Deliveries: the history API when served, else the CRD; both list
            // under this name with the user's own rights.
            "deliveries" if crate::store::history::served(&client).await => ("history.hookrelay.dev", "v1alpha1"),
            _ => ("hookrelay.dev", "v1alpha1"),
        };
        let resource = kube::discovery::ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: String::new(),
            plural: names.kind.into(),
        };
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(client, &namespace, &resource);
        let listed = api
            .list_metadata(&kube::api::ListParams::default().limit(500))
            .await
            .ok()?;
        Some(
            listed
                .items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .map(|n| n + "\n")
                .collect::<String>(),
        )
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), read)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn find_flag<'a>(command: &'a Command, globals: &[&'a Arg], typed: &str) -> Option<&'a Arg> {
    let matches = |a: &&Arg| match typed.strip_prefix("--") {
        Some(long) => a.get_long() == Some(long),
        None => typed.len() == 2 && a.get_short() == typed.chars().nth(1),
    };
    command
        .get_arguments()
        .find(matches)
        .or_else(|| globals.iter().copied().find(matches))
}

fn takes_path(arg: &Arg) -> bool {
    matches!(
        arg.get_value_hint(),
        clap::ValueHint::FilePath | clap::ValueHint::AnyPath
    ) || arg
        .get_value_names()
        .is_some_and(|n| n.iter().any(|n| n.as_str() == "FILE"))
        || arg.get_id().as_str().contains("payload")
        || arg.get_id().as_str() == "kubeconfig"
}

fn first_line(text: &clap::builder::StyledStr) -> String {
    text.to_string().lines().next().unwrap_or_default().to_string()
}

/// Only candidates that start with what is typed are useful, but kubectl
/// and the shell filter too; printing all keeps this simple and correct.
fn line(out: &mut String, word: &str, description: Option<String>) {
    out.push_str(word);
    if let Some(description) = description.filter(|d| !d.is_empty()) {
        out.push('\t');
        out.push_str(&description);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn complete_line(args: &[&str]) -> Vec<String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        complete(&super::super::Plugin::command(), &args)
            .0
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn subcommands_flags_and_values_complete_as_kubectl_asks() {
        let first = complete_line(&[""]);
        // Every subcommand the command line defines (help is clap's own).
        let defined = super::super::Plugin::command();
        for sub in defined.get_subcommands().map(|s| s.get_name().to_string()) {
            assert!(first.contains(&sub), "{sub} in {first:?}");
        }
        assert_eq!(first.last().unwrap(), ":4", "no file names for a subcommand");

        let flags = complete_line(&["deliveries", "--"]);
        for flag in [
            "--outcome",
            "--since",
            "--event",
            "--content-item",
            "--namespace",
            "--output",
        ] {
            assert!(flags.contains(&flag.to_string()), "{flag} in {flags:?}");
        }
        assert!(
            !flags.contains(&"--rotate".to_string()),
            "another command's flag: {flags:?}"
        );

        let outcomes = complete_line(&["deliveries", "--outcome", ""]);
        assert_eq!(outcomes, ["failed", "succeeded", "retrying", ":4"]);
        let formats = complete_line(&["-n", "shop", "deliveries", "-o", ""]);
        assert!(
            formats.contains(&"jsonpath=".to_string()) && formats.contains(&"name".to_string()),
            "{formats:?}"
        );
        // A flag's value is not taken for a subcommand.
        let after_value = complete_line(&["-n", "status", ""]);
        assert!(after_value.contains(&"deliveries".to_string()), "{after_value:?}");

        assert_eq!(
            complete_line(&["test", "shop", "--payload", ""]).last().unwrap(),
            ":0",
            "files for a payload"
        );
        assert_eq!(complete_line(&["completion", ""]).first().unwrap(), "bash");

        // Object names come from the cluster, where the typed flags say.
        let names = |args: &[&str]| {
            complete(
                &super::super::Plugin::command(),
                &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            )
            .1
        };
        let webhook = names(&["-n", "shop", "--context", "prod", "test", "sh"]).unwrap();
        assert_eq!(
            webhook,
            Names {
                kind: "webhooks",
                namespace: Some("shop".into()),
                context: Some("prod".into()),
                kubeconfig: None
            }
        );
        assert_eq!(names(&["show", ""]).unwrap().kind, "deliveries");
        assert_eq!(names(&["redeliver", "d-1", "d-2", ""]).unwrap().kind, "deliveries");
        assert_eq!(names(&["send", ""]).unwrap().kind, "hubs");
        assert_eq!(names(&["test", "shop", ""]), None, "test takes one webhook");
        assert_eq!(names(&["deliveries", "--outcome", ""]), None);
    }
}
