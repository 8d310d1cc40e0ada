//! `kubectl_complete-omero`: kubectl (1.26 and later) runs this, found on the PATH, to complete
//! `kubectl omero ...`, with the plugin's arguments. It runs `kubectl-omero __complete` with
//! them: the `kubectl-omero` beside it, else the one on the PATH. Whatever fails, it prints
//! only an empty answer (`:4`: no candidates, no file names) and nothing on standard error,
//! which kubectl would pass to the terminal.

use std::{
    io::Write,
    process::{Command, ExitCode},
};

fn main() -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|me| Some(me.parent()?.join(format!("kubectl-omero{}", std::env::consts::EXE_SUFFIX))))
        .filter(|plugin| plugin.is_file());
    let plugin = beside.unwrap_or_else(|| "kubectl-omero".into());
    let ran = Command::new(plugin).arg("__complete").args(std::env::args_os().skip(1)).output();
    let answer = match ran {
        Ok(output) if output.status.success() => output.stdout,
        _ => b":4\n".to_vec(),
    };
    let _ = std::io::stdout().write_all(&answer);
    ExitCode::SUCCESS
}
