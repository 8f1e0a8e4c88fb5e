
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
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand check 'Parse and validate route files; report every problem with file:line:col'
            cand compile 'Print the nftables ruleset for the route files (`nft -f` ready)'
            cand completions 'Print shell completions'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'smartproxy;check'= {
            cand --format 'Output format of the findings'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand --deny-warnings 'Exit 1 when there are warnings'
            cand --resolve 'Also resolve target host names (needs DNS)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'smartproxy;compile'= {
            cand --format '`nft` script or nftables JSON (`nft -j -f`)'
            cand -o 'Write to FILE instead of standard output (replaced atomically)'
            cand --output 'Write to FILE instead of standard output (replaced atomically)'
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'smartproxy;completions'= {
            cand --color 'When to colour output: auto = on a terminal and NO_COLOR unset'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'smartproxy;help'= {
            cand check 'Parse and validate route files; report every problem with file:line:col'
            cand compile 'Print the nftables ruleset for the route files (`nft -f` ready)'
            cand completions 'Print shell completions'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'smartproxy;help;check'= {
        }
        &'smartproxy;help;compile'= {
        }
        &'smartproxy;help;completions'= {
        }
        &'smartproxy;help;help'= {
        }
    ]
    $completions[$command]
}
