# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_smartproxy_global_optspecs
    string join \n color= kernel-timeout= follow-symlinks h/help V/version
end

function __fish_smartproxy_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_smartproxy_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_smartproxy_using_subcommand
    set -l cmd (__fish_smartproxy_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c smartproxy -n "__fish_smartproxy_needs_command" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_needs_command" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_needs_command" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -s V -l version -d 'Print version'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "check" -d 'Parse and validate route files; report every problem with file:line:col'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "compile" -d 'Print the nftables ruleset for the route files (`nft -f` ready)'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "plan" -d 'Show what apply would change in the live kernel (Terraform-style)'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "apply" -d 'Make the kernel match the route files in one atomic transaction'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "confirm" -d 'Keep the ruleset of the last `apply --confirm-timeout` (exit 1 if nothing is pending)'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "rollback" -d 'Restore now what the pending `apply --confirm-timeout` would restore at its deadline (exit 1 if nothing is pending)'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "destroy" -d 'Remove smartproxy\'s table (and nothing else)'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "status" -d 'Per route: packets, bytes and open connections in the kernel, serve\'s own counts'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "serve" -d 'Run the userspace engine for the routes the kernel cannot serve (SNI, TLS, redirects)'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "__watchdog" -d 'Internal: the detached confirm-timeout watchdog'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "completions" -d 'Print shell completions'
complete -c smartproxy -n "__fish_smartproxy_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand check" -l format -d 'Output format of the findings' -r -f -a "text\t''
json\t''
github\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand check" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand check" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand check" -l deny-warnings -d 'Exit 1 when there are warnings'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand check" -l resolve -d 'Also resolve target host names (needs DNS)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand check" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand compile" -l format -d '`nft` script or nftables JSON (`nft -j -f`)' -r -f -a "nft\t''
json\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand compile" -s o -l output -d 'Write to FILE instead of standard output (replaced atomically)' -r -F
complete -c smartproxy -n "__fish_smartproxy_using_subcommand compile" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand compile" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand compile" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand compile" -s h -l help -d 'Print help'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand plan" -l out -d 'Save the plan (with fingerprints of inputs and live state) for `apply --plan`' -r -F
complete -c smartproxy -n "__fish_smartproxy_using_subcommand plan" -l format -r -f -a "text\t''
json\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand plan" -l lock-timeout -d 'Seconds to wait for another smartproxy\'s lock' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand plan" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand plan" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand plan" -l detailed-exitcode -d 'Exit 2 when there are changes, 0 when there are none'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand plan" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand plan" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand apply" -l plan -d 'Apply a plan saved by `plan --out`; refused when the live state has changed since' -r -F
complete -c smartproxy -n "__fish_smartproxy_using_subcommand apply" -l confirm-timeout -d 'Roll back unless `smartproxy confirm` comes within SECS, at least 5 (survives this process)' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand apply" -l lock-timeout -d 'Seconds to wait for another smartproxy\'s lock' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand apply" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand apply" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand apply" -l auto-approve -d 'Apply without asking'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand apply" -l force -d 'Apply even while a running `smartproxy serve` owns the table (it puts its own routes back within a second)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand apply" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand apply" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand confirm" -l table -d 'Only this table (default: every pending table of this network namespace)' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand confirm" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand confirm" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand confirm" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand confirm" -s h -l help -d 'Print help'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand rollback" -l table -d 'Only this table (default: every pending table of this network namespace)' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand rollback" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand rollback" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand rollback" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand destroy" -l table -d 'The table to remove (default: PATH\'s settings, else the table a running serve owns, else the only smartproxy table here, else `smartproxy`)' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand destroy" -l lock-timeout -d 'Seconds to wait for another smartproxy\'s lock' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand destroy" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand destroy" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand destroy" -l auto-approve -d 'Destroy without asking'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand destroy" -l force -d 'Destroy even while a running `smartproxy serve` owns the table (it puts its own routes back within a second)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand destroy" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand destroy" -s h -l help -d 'Print help'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand status" -l table -d 'The table to report on (default: PATH\'s settings, else the table a running serve owns, else the only smartproxy table here, else `smartproxy`)' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand status" -l format -r -f -a "text\t''
json\t''
prometheus\t'Prometheus text exposition (for node_exporter\'s textfile collector)'"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand status" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand status" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand status" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l metrics -d 'Serve Prometheus metrics at http://ADDR/metrics' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l hello-timeout -d 'Seconds a client has to send its TLS ClientHello (and finish the handshake)' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l connect-timeout -d 'Seconds to connect to a target before trying the next one' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l idle-timeout -d 'Seconds without a byte in either direction before a connection is closed' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l drain-timeout -d 'Seconds open connections get to finish after SIGTERM/SIGINT' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l watch-interval -d 'Seconds between checks of the route files for changes (0: only SIGHUP reloads)' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l nftables -d 'Who carries the kernel routes: nftables when available (auto), nftables or fail (on), or serve itself (off)' -r -f -a "auto\t'Use nftables when `nft` is installed and this process holds CAP_NET_ADMIN; else serve the kernel routes in userspace, with a warning'
on\t'Use nftables, or fail'
off\t'Serve every route in userspace'"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l health-interval -d 'Seconds between health checks of each target (0: no checks)' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l health-timeout -d 'Seconds a health check\'s TCP connect may take' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l health-fall -d 'Failed checks in a row that take a target out' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l health-rise -d 'Passed checks in a row that bring a target back' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l socket-group -d 'Group (name or GID) of the status socket, which is always mode 0660; the state directory then becomes mode 0710 in that group, so that its members can reach the socket and run `smartproxy status` (default: serve\'s own group, directory unchanged). An unknown group stops serve before it starts' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l keep-kernel-routes -d 'On stop, leave the kernel routes in place (default: remove serve\'s table)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand __watchdog" -l table -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand __watchdog" -l token -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand __watchdog" -l deadline-ms -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand __watchdog" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand __watchdog" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand __watchdog" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand __watchdog" -s h -l help -d 'Print help'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand completions" -l color -d 'When to colour output: auto = on a terminal and NO_COLOR unset' -r -f -a "auto\t''
always\t''
never\t''"
complete -c smartproxy -n "__fish_smartproxy_using_subcommand completions" -l kernel-timeout -d 'Seconds any one external command (nft, conntrack, unshare) may take before it is killed and the command fails; the lock is free again afterwards' -r
complete -c smartproxy -n "__fish_smartproxy_using_subcommand completions" -l follow-symlinks -d 'Read route files that are symlinks leading out of their route directory (refused by default, so a link planted in `routes.d` cannot make us read and quote any file)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand completions" -s h -l help -d 'Print help'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "check" -d 'Parse and validate route files; report every problem with file:line:col'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "compile" -d 'Print the nftables ruleset for the route files (`nft -f` ready)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "plan" -d 'Show what apply would change in the live kernel (Terraform-style)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "apply" -d 'Make the kernel match the route files in one atomic transaction'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "confirm" -d 'Keep the ruleset of the last `apply --confirm-timeout` (exit 1 if nothing is pending)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "rollback" -d 'Restore now what the pending `apply --confirm-timeout` would restore at its deadline (exit 1 if nothing is pending)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "destroy" -d 'Remove smartproxy\'s table (and nothing else)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "status" -d 'Per route: packets, bytes and open connections in the kernel, serve\'s own counts'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "serve" -d 'Run the userspace engine for the routes the kernel cannot serve (SNI, TLS, redirects)'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "__watchdog" -d 'Internal: the detached confirm-timeout watchdog'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "completions" -d 'Print shell completions'
complete -c smartproxy -n "__fish_smartproxy_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback destroy status serve __watchdog completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
