//! `bgsched completions` and `bgsched man`: generated from the clap
//! definitions, so these check that what comes out is usable and complete.

mod common;

use common::*;
use std::process::Command;

const COMMANDS: [&str; 12] = [
    "run",
    "list",
    "trigger",
    "cancel",
    "pause",
    "resume",
    "logs",
    "check",
    "next",
    "history",
    "completions",
    "man",
];

#[test]
fn completions_name_every_command_and_no_internal_one() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = env.cmd(&["completions", shell]).run().success();
        for cmd in COMMANDS {
            assert!(out.stdout.contains(cmd), "{shell} lacks {cmd}");
        }
        assert!(
            out.stdout.contains("--output"),
            "{shell} lacks history's --output"
        );
        assert!(
            out.stdout.contains("--param") || out.stdout.contains("-l param"),
            "{shell} lacks trigger's --param"
        );
        assert!(
            !out.stdout.contains("__supervise"),
            "{shell} offers the internal command"
        );
    }
}

#[test]
fn bash_completion_loads_and_completes_commands() {
    let env = Env::new();
    let script = env.cmd(&["completions", "bash"]).run().success().stdout;
    let path = env.write("bgsched.bash", &script);
    // Load it into a real bash and ask it to complete `bgsched hi`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "source \"$1\" && complete -p bgsched >/dev/null && \
             COMP_WORDS=(bgsched hi) COMP_CWORD=1 COMP_LINE='bgsched hi' COMP_POINT=10 && \
             _bgsched bgsched hi bgsched && printf '%s\\n' \"${COMPREPLY[@]}\"",
        )
        .arg("bash")
        .arg(&path)
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bash could not load the completion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "history", "completions of `bgsched hi`");
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    Env::new()
        .cmd(&["completions", "tcsh"])
        .run()
        .code(2)
        .stderr_has("possible values");
}

#[test]
fn the_man_page_is_roff_naming_every_command() {
    let out = Env::new().cmd(&["man"]).run().success();
    let page = out.stdout;
    assert!(page.contains(".TH bgsched 1"), "{page}");
    assert!(
        page.contains(".SH NAME") && page.contains(".SH SYNOPSIS"),
        "{page}"
    );
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for cmd in COMMANDS {
        assert!(
            page.contains(&format!("\nbgsched\\-{cmd}(1)\n")),
            "SUBCOMMANDS lacks {cmd}: {page}"
        );
    }
    assert!(
        page.contains("Exit codes"),
        "the exit codes are in the page"
    );
    assert!(!page.contains("supervise"), "{page}");
}

#[test]
fn each_command_has_its_own_man_page() {
    let env = Env::new();
    for cmd in COMMANDS {
        let page = env.cmd(&["man", cmd]).run().success().stdout;
        assert!(page.contains(&format!(".TH bgsched-{cmd} 1")), "{page}");
        assert!(page.contains(".SH OPTIONS"), "{cmd}: {page}");
    }
    let history = env.cmd(&["man", "history"]).run().success().stdout;
    assert!(history.contains("\\-\\-output"), "{history}");
    env.cmd(&["man", "histroy"])
        .run()
        .code(2)
        .stderr_has("man pages exist for: run, list");
    env.cmd(&["man", "__supervise"]).run().code(2);
}

#[test]
fn completions_and_man_need_no_config() {
    // Packagers generate them at build time, where no jobs.toml exists.
    let env = Env::new();
    assert!(!env.path("jobs.toml").exists());
    env.cmd(&["completions", "bash"]).run().success();
    env.cmd(&["man"]).run().success();
}
