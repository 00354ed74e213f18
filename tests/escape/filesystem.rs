//! Filesystem: reading the host's secret file by every path trick, writing outside the
//! workspace, the workspace's .git/hooks, /proc/sys and /sys, /dev.

use crate::support::*;

const DOTDOT: &str = r#"
canary, ws = sys.argv[1], os.getcwd()
up = "../" * (ws.count("/") + 3)
t("dotdot", lambda: read(ws + "/" + up + canary.lstrip("/")))
t("abs", lambda: read(canary))
done()
"#;

#[test]
fn the_secret_file_cannot_be_read_by_dotdot_or_absolute_path() {
    require_root("escape suite");
    let c = Canaries::plant();
    let run = Sandbox::new("dotdot")
        .with_canaries(&c)
        .python(DOTDOT, &[c.file_str()]);
    run.expect_exit(0)
        .expect("dotdot", err(ENOENT))
        .expect("abs", err(ENOENT));
    c.assert_nothing_got_through(&run);
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: the same probe with the secret's directory bound read-only reads it.
    let dir = c.file.parent().unwrap().to_str().unwrap().to_string();
    let control = Sandbox::new("dotdot control")
        .flags(&["--mount", &dir])
        .python(DOTDOT, &[c.file_str()]);
    control.expect("abs", ok(c.file_secret.as_str()));
}
