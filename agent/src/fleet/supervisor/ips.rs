//! The IP watch: a change of the host's addresses is reported and every job loop restarts on
//! fresh connections.

use super::Supervisor;
use crate::fleet::messages::RunnerEventKind;

impl Supervisor {
    /// Compares the host's IPs; on a change tells the controller and restarts every job loop
    /// on fresh connections. Nothing is verified: GitLab records a runner manager's address
    /// from every authenticated request (`authenticate_runner!` in gitlabhq's
    /// `lib/api/ci/helpers/runner.rb`), so the restarted loops' first job request updates it,
    /// and a `403` there takes the token-invalid path.
    pub(super) fn check_ips(&mut self) {
        let ips = (self.deps.ips)();
        let mut a = ips.clone();
        let mut b = self.ips.clone();
        a.sort();
        b.sort();
        if a == b {
            return;
        }
        let msg = format!("ips changed: [{}] -> [{}]", b.join(", "), a.join(", "));
        tracing::info!("{msg}");
        self.ips = ips;
        if let Some(f) = &self.deps.on_ips_changed {
            f();
        }
        let names: Vec<String> = self.units.keys().cloned().collect();
        for name in &names {
            self.event(name, RunnerEventKind::IpsChanged, &msg);
            if let Some(e) = self.units.get_mut(name) {
                e.log(&msg);
                if e.unit.state.wants_loop() {
                    e.log("job loop restarted on new connections after the ip change");
                }
            }
        }
        self.restart_loops();
        self.dirty = true;
    }
}
