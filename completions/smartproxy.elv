
use builtin;
use str;

set edit:completion:arg-completer[smartproxy] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'smartproxy'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'smartproxy'= {
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand check 'Parse and validate route files; report every problem with file:line:col'
            cand compile 'Print the nftables ruleset for the route files (`nft -f` ready)'
            cand plan 'Show what apply would change in the live kernel (Terraform-style)'
            cand apply 'Make the kernel match the route files in one atomic transaction'
            cand confirm 'Keep the ruleset of the last `apply --confirm-timeout` (exit 1 if nothing is pending)'
            cand rollback 'Restore now what the pending `apply --confirm-timeout` would restore at its deadline (exit 1 if nothing is pending)'
            cand destroy 'Remove smartproxy''s table (and nothing else)'
            cand status 'Per route: packets, bytes and open connections in the kernel, serve''s own counts'
            cand serve 'Run the userspace engine for the routes the kernel cannot serve (SNI, TLS, redirects)'
            cand __watchdog 'Internal: the detached confirm-timeout watchdog'
            cand completions 'Print shell completions'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'smartproxy;check'= {
            cand --format 'Output format of the findings'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --deny-warnings 'Exit 1 when there are warnings'
            cand --resolve 'Also resolve target host names (needs DNS)'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'smartproxy;compile'= {
            cand --format '`nft` script or nftables JSON (`nft -j -f`)'
            cand -o 'Write to FILE instead of standard output (replaced atomically)'
            cand --output 'Write to FILE instead of standard output (replaced atomically)'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'smartproxy;plan'= {
            cand --out 'Save the plan (with fingerprints of inputs and live state) for `apply --plan`'
            cand --format 'format'
            cand --lock-timeout 'Seconds to wait for another smartproxy''s lock'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --detailed-exitcode 'Exit 2 when there are changes, 0 when there are none'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'smartproxy;apply'= {
            cand --plan 'Apply a plan saved by `plan --out`; refused when the live state has changed since'
            cand --confirm-timeout 'Roll back unless `smartproxy confirm` comes within SECS, at least 5 (survives this process)'
            cand --lock-timeout 'Seconds to wait for another smartproxy''s lock'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --auto-approve 'Apply without asking'
            cand --force 'Apply even while a running `smartproxy serve` owns the table (it puts its own routes back within a second)'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'smartproxy;confirm'= {
            cand --table 'Only this table (default: every pending table of this network namespace)'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'smartproxy;rollback'= {
            cand --table 'Only this table (default: every pending table of this network namespace)'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'smartproxy;destroy'= {
            cand --table 'The table to remove (default: PATH''s settings, else the table a running serve owns, else the only smartproxy table here, else `smartproxy`)'
            cand --lock-timeout 'Seconds to wait for another smartproxy''s lock'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --auto-approve 'Destroy without asking'
            cand --force 'Destroy even while a running `smartproxy serve` owns the table (it puts its own routes back within a second)'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'smartproxy;status'= {
            cand --table 'The table to report on (default: PATH''s settings, else the table a running serve owns, else the only smartproxy table here, else `smartproxy`)'
            cand --format 'format'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'smartproxy;serve'= {
            cand --metrics 'Serve Prometheus metrics at http://ADDR/metrics'
            cand --hello-timeout 'Seconds a client has to send its TLS ClientHello (and finish the handshake)'
            cand --connect-timeout 'Seconds to connect to a target before trying the next one'
            cand --idle-timeout 'Seconds without a byte in either direction before a connection is closed'
            cand --drain-timeout 'Seconds open connections get to finish after SIGTERM/SIGINT'
            cand --watch-interval 'Seconds between checks of the route files for changes (0: only SIGHUP reloads)'
            cand --nftables 'Who carries the kernel routes: nftables when available (auto), nftables or fail (on), or serve itself (off)'
            cand --health-interval 'Seconds between health checks of each target (0: no checks)'
            cand --health-timeout 'Seconds a health check''s TCP connect may take'
            cand --health-fall 'Failed checks in a row that take a target out'
            cand --health-rise 'Passed checks in a row that bring a target back'
            cand --socket-group 'Group (name or GID) of the status socket, which is always mode 0660; the state directory then becomes mode 0710 in that group, so that its members can reach the socket and run `smartproxy status` (default: serve''s own group, directory unchanged). An unknown group stops serve before it starts'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --keep-kernel-routes 'On stop, leave the kernel routes in place (default: remove serve''s table)'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'smartproxy;__watchdog'= {
            cand --table 'table'
            cand --token 'token'
            cand --deadline-ms 'deadline-ms'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'smartproxy;completions'= {
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --kernel-timeout 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards'
            cand --follow-symlinks 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'smartproxy;help'= {
            cand check 'Parse and validate route files; report every problem with file:line:col'
            cand compile 'Print the nftables ruleset for the route files (`nft -f` ready)'
            cand plan 'Show what apply would change in the live kernel (Terraform-style)'
            cand apply 'Make the kernel match the route files in one atomic transaction'
            cand confirm 'Keep the ruleset of the last `apply --confirm-timeout` (exit 1 if nothing is pending)'
            cand rollback 'Restore now what the pending `apply --confirm-timeout` would restore at its deadline (exit 1 if nothing is pending)'
            cand destroy 'Remove smartproxy''s table (and nothing else)'
            cand status 'Per route: packets, bytes and open connections in the kernel, serve''s own counts'
            cand serve 'Run the userspace engine for the routes the kernel cannot serve (SNI, TLS, redirects)'
            cand __watchdog 'Internal: the detached confirm-timeout watchdog'
            cand completions 'Print shell completions'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'smartproxy;help;check'= {
        }
        &'smartproxy;help;compile'= {
        }
        &'smartproxy;help;plan'= {
        }
        &'smartproxy;help;apply'= {
        }
        &'smartproxy;help;confirm'= {
        }
        &'smartproxy;help;rollback'= {
        }
        &'smartproxy;help;destroy'= {
        }
        &'smartproxy;help;status'= {
        }
        &'smartproxy;help;serve'= {
        }
        &'smartproxy;help;__watchdog'= {
        }
        &'smartproxy;help;completions'= {
        }
        &'smartproxy;help;help'= {
        }
    ]
    $completions[$command]
}
