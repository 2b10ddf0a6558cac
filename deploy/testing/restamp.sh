# Sourced by the package and systemd tests inside their containers.
# restamp FILE FROM TO: rewrites a binary's version stamp in place (same length, NUL padded),
# so a copy of the packaged agent reports version TO: a second version without a second build.
restamp() {
    FROM="$2" TO="$3" perl -0777 -i -pe \
        's/DROVER-VERSION-STAMP:\Q$ENV{FROM}\E(\0+)/"DROVER-VERSION-STAMP:$ENV{TO}" . ("\0" x (length($ENV{FROM}) + length($1) - length($ENV{TO})))/ge' "$1"
}
