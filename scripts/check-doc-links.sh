#!/usr/bin/env bash
# Checks the internal links of README.md and of the guide (docs/src/**/*.md):
#   - a relative link ([text](path), [text](path#anchor), [text](#anchor)) names a
#     file or directory that exists in the repository;
#   - an #anchor into a Markdown file is one of that file's headings, with
#     mdBook's rule for ids (lower case; letters, digits, '-' and '_' kept,
#     white space made '-', the rest dropped; a repeated heading gets -1, -2);
#   - every chapter under docs/src is listed in docs/src/SUMMARY.md (an
#     unlisted file is never built). Lines inside HTML comments (the reserved
#     chapters of SUMMARY.md) and code (fenced or inline) are not links.
# External links (http:, https:, mailto:) are not fetched. Exits 1 naming
# every broken link as FILE:LINE: TARGET: WHY.
# Why a script: mdbook-linkcheck does not run under mdbook 0.5 ("Unable to parse
# RenderContext"); its fork mdbook-linkcheck2 0.13 does, but (tried 2026-12-07)
# misses a link to a missing #anchor and an unlisted chapter, never reads
# README.md, and takes 24 minutes to install on the CI machine.
#
#   scripts/check-doc-links.sh [ROOT]     (default: this checkout)
#   scripts/check-doc-links.sh --self-test
#
# --self-test copies the docs into a temporary tree, plants a link to a
# missing file, a link to a missing anchor and an unlisted chapter, and fails
# unless the check reports each of the three (and passes on the clean copy).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)

check() {
    local root=$1
    (
        cd "$root"
        { [ -f README.md ] && echo README.md; find docs/src -name '*.md' | sort; } |
            perl -e '
use strict;
use warnings;

my %ids_cache;
sub slurp { my ($f) = @_; open(my $h, "<", $f) or return undef; local $/; my $t = <$h>; close $h; return $t; }

# The lines of a file with code and comments blanked (line numbers kept).
sub prose_lines {
    my ($text) = @_;
    $text =~ s/<!--(.*?)-->/my $c = $1; "\n" x ($c =~ tr{\n}{})/gse;
    my @out;
    my $fence;
    for my $line (split /\n/, $text, -1) {
        if (defined $fence) {
            $fence = undef if $line =~ /^\s*\Q$fence\E\s*$/;
            push @out, "";
            next;
        }
        if ($line =~ /^\s*(```+|~~~+)/) { $fence = $1; push @out, ""; next; }
        $line =~ s/(`+).*?\1//g;
        push @out, $line;
    }
    return @out;
}

sub heading_ids {
    my ($file) = @_;
    return $ids_cache{$file} if $ids_cache{$file};
    my %ids;
    my %seen;
    my $text = slurp($file) // "";
    my $fence;
    for my $line (split /\n/, $text) {
        if (defined $fence) { $fence = undef if $line =~ /^\s*\Q$fence\E\s*$/; next; }
        if ($line =~ /^\s*(```+|~~~+)/) { $fence = $1; next; }
        next unless $line =~ /^#{1,6}\s+(.*?)\s*#*\s*$/;
        my $h = $1;
        $h =~ s/!?\[([^\]]*)\]\([^)]*\)/$1/g;
        $h =~ s/<[^>]+>//g;
        $h =~ s/[`*]//g;
        my $id = lc $h;
        $id =~ s/\s/-/g;
        $id =~ s/[^\w-]//g;
        my $n = $seen{$id}++;
        $ids{$n ? "$id-$n" : $id} = 1;
    }
    return $ids_cache{$file} = \%ids;
}

sub normalize {
    my ($path) = @_;
    my @parts;
    for my $p (split m{/}, $path) {
        next if $p eq "" || $p eq ".";
        if ($p eq "..") { return undef unless @parts; pop @parts; next; }
        push @parts, $p;
    }
    return join "/", @parts;
}

my @files = map { chomp; $_ } <STDIN>;
my $errors = 0;
sub bad { my ($where, $target, $why) = @_; print STDERR "$where: $target: $why\n"; $errors++; }

for my $file (@files) {
    my $text = slurp($file) // next;
    my $dir = $file =~ m{^(.*)/} ? $1 : "";
    my $n = 0;
    for my $line (prose_lines($text)) {
        $n++;
        while ($line =~ /\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g) {
            my $target = $1;
            next if $target =~ /^[a-zA-Z][a-zA-Z0-9+.-]*:/;
            my ($path, $anchor) = $target =~ /^([^#]*)(?:#(.*))?$/;
            my $resolved = $path eq "" ? $file : normalize($dir eq "" ? $path : "$dir/$path");
            if (!defined $resolved) { bad("$file:$n", $target, "leaves the repository"); next; }
            if ($resolved ne "" && !-e $resolved) { bad("$file:$n", $target, "no such file"); next; }
            next unless defined $anchor && $anchor ne "";
            if ($resolved !~ /\.md$/) { bad("$file:$n", $target, "an anchor into a file that is not Markdown"); next; }
            bad("$file:$n", $target, "no heading with this anchor in $resolved") unless heading_ids($resolved)->{$anchor};
        }
    }
}

# Every chapter is in SUMMARY.md (commented-out entries do not count).
if (-f "docs/src/SUMMARY.md") {
    my %listed;
    for my $line (prose_lines(slurp("docs/src/SUMMARY.md"))) {
        while ($line =~ /\]\(([^)#]+)/g) { $listed{normalize("docs/src/$1")} = 1; }
    }
    for my $file (grep { m{^docs/src/} && !m{/SUMMARY\.md$} } @files) {
        bad($file, "SUMMARY.md", "chapter not listed in docs/src/SUMMARY.md") unless $listed{$file};
    }
}
if ($errors) { print STDERR "check-doc-links: $errors broken link(s)\n"; exit 1; }
print STDERR "check-doc-links: " . scalar(@files) . " files, every internal link resolves\n";
'
    )
}

self_test() {
    # Global: the EXIT trap runs after this function has returned.
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/walrcv-doclinks.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # The files the docs link to, so that the clean copy passes.
    (cd "$here" && git ls-files -z | grep -zv '^target/' | xargs -0 cp --parents -t "$tmp" 2>/dev/null) || true
    cp -r "$here/docs" "$here/README.md" "$tmp/"
    for f in ARCHITECTURE.md tests/README.md; do
        [ -e "$tmp/$f" ] || { mkdir -p "$tmp/$(dirname "$f")" && echo "# placeholder" >"$tmp/$f"; }
    done
    if ! check "$tmp" 2>"$tmp/clean.log"; then
        cat "$tmp/clean.log" >&2
        echo "check-doc-links --self-test: the clean copy fails" >&2
        return 1
    fi
    cat >>"$tmp/docs/src/introduction.md" <<'EOF'

[planted file](no-such-chapter.md) and [planted anchor](stream.md#no-such-heading).
EOF
    echo "# Orphan" >"$tmp/docs/src/planted-orphan.md"
    if check "$tmp" 2>"$tmp/broken.log"; then
        echo "check-doc-links --self-test: planted broken links were not found" >&2
        return 1
    fi
    local want
    for want in 'no-such-chapter.md: no such file' 'stream.md#no-such-heading: no heading' \
        'planted-orphan.md: SUMMARY.md: chapter not listed'; do
        grep -q "$want" "$tmp/broken.log" || {
            cat "$tmp/broken.log" >&2
            echo "check-doc-links --self-test: not reported: $want" >&2
            return 1
        }
    done
    echo "check-doc-links --self-test: ok (clean copy passes; planted file, anchor and orphan reported)" >&2
}

case "${1:-}" in
--self-test) self_test ;;
-h | --help) sed -n '2,23p' "$0" ;;
*) check "${1:-$here}" ;;
esac
