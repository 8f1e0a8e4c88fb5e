
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'smartproxy' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'smartproxy'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'smartproxy' {
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('check', 'check', [CompletionResultType]::ParameterValue, 'Parse and validate route files; report every problem with file:line:col')
            [CompletionResult]::new('compile', 'compile', [CompletionResultType]::ParameterValue, 'Print the nftables ruleset for the route files (`nft -f` ready)')
            [CompletionResult]::new('plan', 'plan', [CompletionResultType]::ParameterValue, 'Show what apply would change in the live kernel (Terraform-style)')
            [CompletionResult]::new('apply', 'apply', [CompletionResultType]::ParameterValue, 'Make the kernel match the route files in one atomic transaction')
            [CompletionResult]::new('confirm', 'confirm', [CompletionResultType]::ParameterValue, 'Keep the ruleset of the last `apply --confirm-timeout` (exit 1 if nothing is pending)')
            [CompletionResult]::new('rollback', 'rollback', [CompletionResultType]::ParameterValue, 'Restore now what the pending `apply --confirm-timeout` would restore at its deadline (exit 1 if nothing is pending)')
            [CompletionResult]::new('destroy', 'destroy', [CompletionResultType]::ParameterValue, 'Remove smartproxy''s table (and nothing else)')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Per route: packets, bytes and open connections in the kernel, serve''s own counts')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the userspace engine for the routes the kernel cannot serve (SNI, TLS, redirects)')
            [CompletionResult]::new('__watchdog', '__watchdog', [CompletionResultType]::ParameterValue, 'Internal: the detached confirm-timeout watchdog')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print shell completions')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'smartproxy;check' {
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format of the findings')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--deny-warnings', '--deny-warnings', [CompletionResultType]::ParameterName, 'Exit 1 when there are warnings')
            [CompletionResult]::new('--resolve', '--resolve', [CompletionResultType]::ParameterName, 'Also resolve target host names (needs DNS)')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'smartproxy;compile' {
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, '`nft` script or nftables JSON (`nft -j -f`)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Write to FILE instead of standard output (replaced atomically)')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Write to FILE instead of standard output (replaced atomically)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'smartproxy;plan' {
            [CompletionResult]::new('--out', '--out', [CompletionResultType]::ParameterName, 'Save the plan (with fingerprints of inputs and live state) for `apply --plan`')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'format')
            [CompletionResult]::new('--lock-timeout', '--lock-timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for another smartproxy''s lock')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--detailed-exitcode', '--detailed-exitcode', [CompletionResultType]::ParameterName, 'Exit 2 when there are changes, 0 when there are none')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'smartproxy;apply' {
            [CompletionResult]::new('--plan', '--plan', [CompletionResultType]::ParameterName, 'Apply a plan saved by `plan --out`; refused when the live state has changed since')
            [CompletionResult]::new('--confirm-timeout', '--confirm-timeout', [CompletionResultType]::ParameterName, 'Roll back unless `smartproxy confirm` comes within SECS, at least 5 (survives this process)')
            [CompletionResult]::new('--lock-timeout', '--lock-timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for another smartproxy''s lock')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--auto-approve', '--auto-approve', [CompletionResultType]::ParameterName, 'Apply without asking')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Apply even while a running `smartproxy serve` owns the table (it puts its own routes back within a second)')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'smartproxy;confirm' {
            [CompletionResult]::new('--table', '--table', [CompletionResultType]::ParameterName, 'Only this table (default: every pending table of this network namespace)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'smartproxy;rollback' {
            [CompletionResult]::new('--table', '--table', [CompletionResultType]::ParameterName, 'Only this table (default: every pending table of this network namespace)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'smartproxy;destroy' {
            [CompletionResult]::new('--table', '--table', [CompletionResultType]::ParameterName, 'The table to remove (default: PATH''s settings, else the table a running serve owns, else the only smartproxy table here, else `smartproxy`)')
            [CompletionResult]::new('--lock-timeout', '--lock-timeout', [CompletionResultType]::ParameterName, 'Seconds to wait for another smartproxy''s lock')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--auto-approve', '--auto-approve', [CompletionResultType]::ParameterName, 'Destroy without asking')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Destroy even while a running `smartproxy serve` owns the table (it puts its own routes back within a second)')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'smartproxy;status' {
            [CompletionResult]::new('--table', '--table', [CompletionResultType]::ParameterName, 'The table to report on (default: PATH''s settings, else the table a running serve owns, else the only smartproxy table here, else `smartproxy`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'format')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'smartproxy;serve' {
            [CompletionResult]::new('--metrics', '--metrics', [CompletionResultType]::ParameterName, 'Serve Prometheus metrics at http://ADDR/metrics')
            [CompletionResult]::new('--hello-timeout', '--hello-timeout', [CompletionResultType]::ParameterName, 'Seconds a client has to send its TLS ClientHello (and finish the handshake)')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Seconds to connect to a target before trying the next one')
            [CompletionResult]::new('--idle-timeout', '--idle-timeout', [CompletionResultType]::ParameterName, 'Seconds without a byte in either direction before a connection is closed')
            [CompletionResult]::new('--drain-timeout', '--drain-timeout', [CompletionResultType]::ParameterName, 'Seconds open connections get to finish after SIGTERM/SIGINT')
            [CompletionResult]::new('--watch-interval', '--watch-interval', [CompletionResultType]::ParameterName, 'Seconds between checks of the route files for changes (0: only SIGHUP reloads)')
            [CompletionResult]::new('--nftables', '--nftables', [CompletionResultType]::ParameterName, 'Who carries the kernel routes: nftables when available (auto), nftables or fail (on), or serve itself (off)')
            [CompletionResult]::new('--health-interval', '--health-interval', [CompletionResultType]::ParameterName, 'Seconds between health checks of each target (0: no checks)')
            [CompletionResult]::new('--health-timeout', '--health-timeout', [CompletionResultType]::ParameterName, 'Seconds a health check''s TCP connect may take')
            [CompletionResult]::new('--health-fall', '--health-fall', [CompletionResultType]::ParameterName, 'Failed checks in a row that take a target out')
            [CompletionResult]::new('--health-rise', '--health-rise', [CompletionResultType]::ParameterName, 'Passed checks in a row that bring a target back')
            [CompletionResult]::new('--socket-group', '--socket-group', [CompletionResultType]::ParameterName, 'Group (name or GID) of the status socket, which is always mode 0660; the state directory then becomes mode 0710 in that group, so that its members can reach the socket and run `smartproxy status` (default: serve''s own group, directory unchanged). An unknown group stops serve before it starts')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--keep-kernel-routes', '--keep-kernel-routes', [CompletionResultType]::ParameterName, 'On stop, leave the kernel routes in place (default: remove serve''s table)')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'smartproxy;__watchdog' {
            [CompletionResult]::new('--table', '--table', [CompletionResultType]::ParameterName, 'table')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'token')
            [CompletionResult]::new('--deadline-ms', '--deadline-ms', [CompletionResultType]::ParameterName, 'deadline-ms')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'smartproxy;completions' {
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto = on a terminal and NO_COLOR unset')
            [CompletionResult]::new('--kernel-timeout', '--kernel-timeout', [CompletionResultType]::ParameterName, 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards')
            [CompletionResult]::new('--follow-symlinks', '--follow-symlinks', [CompletionResultType]::ParameterName, 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'smartproxy;help' {
            [CompletionResult]::new('check', 'check', [CompletionResultType]::ParameterValue, 'Parse and validate route files; report every problem with file:line:col')
            [CompletionResult]::new('compile', 'compile', [CompletionResultType]::ParameterValue, 'Print the nftables ruleset for the route files (`nft -f` ready)')
            [CompletionResult]::new('plan', 'plan', [CompletionResultType]::ParameterValue, 'Show what apply would change in the live kernel (Terraform-style)')
            [CompletionResult]::new('apply', 'apply', [CompletionResultType]::ParameterValue, 'Make the kernel match the route files in one atomic transaction')
            [CompletionResult]::new('confirm', 'confirm', [CompletionResultType]::ParameterValue, 'Keep the ruleset of the last `apply --confirm-timeout` (exit 1 if nothing is pending)')
            [CompletionResult]::new('rollback', 'rollback', [CompletionResultType]::ParameterValue, 'Restore now what the pending `apply --confirm-timeout` would restore at its deadline (exit 1 if nothing is pending)')
            [CompletionResult]::new('destroy', 'destroy', [CompletionResultType]::ParameterValue, 'Remove smartproxy''s table (and nothing else)')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Per route: packets, bytes and open connections in the kernel, serve''s own counts')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the userspace engine for the routes the kernel cannot serve (SNI, TLS, redirects)')
            [CompletionResult]::new('__watchdog', '__watchdog', [CompletionResultType]::ParameterValue, 'Internal: the detached confirm-timeout watchdog')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print shell completions')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'smartproxy;help;check' {
            break
        }
        'smartproxy;help;compile' {
            break
        }
        'smartproxy;help;plan' {
            break
        }
        'smartproxy;help;apply' {
            break
        }
        'smartproxy;help;confirm' {
            break
        }
        'smartproxy;help;rollback' {
            break
        }
        'smartproxy;help;destroy' {
            break
        }
        'smartproxy;help;status' {
            break
        }
        'smartproxy;help;serve' {
            break
        }
        'smartproxy;help;__watchdog' {
            break
        }
        'smartproxy;help;completions' {
            break
        }
        'smartproxy;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
