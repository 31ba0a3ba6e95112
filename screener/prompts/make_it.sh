#!/bin/sh
# Regenerate the shipped Italian prompts (formal "Lei"), as screener/prompts/README.md describes.
# Needs espeak-ng and sox only here, never at run time: apt-get install -y espeak-ng sox
set -eu
cd "$(dirname "$0")"
# Clarity on an 8 kHz line: slower than espeak's 175 wpm, a little lower pitch, longer gaps between words,
# loud enough that norm only trims; then band-limited to what a telephone carries.
VOICE="-v it -s 140 -p 40 -g 4 -a 160"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() {  # say NAME TEXT [ESPEAK OPTIONS]: later options win
    # shellcheck disable=SC2086
    espeak-ng $VOICE ${3:-} -w "$tmp/raw.wav" "$2"
    sox "$tmp/raw.wav" -r 8000 -c 1 -b 16 "$1_it.wav" gain -6 highpass 200 lowpass 3400 norm -3 \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse pad 0.1 0.15
}

# the challenge a little faster: the caller waits through it before pressing (under 7 s with the key)
say challenge "Buongiorno. Questa linea filtra le chiamate sconosciute. Per parlare, prema il tasto" "-s 150 -g 3"
say passed "Grazie. Il Suo numero è stato verificato."
say voicemail "Al momento nessuno può rispondere. Lasci un messaggio dopo il segnale acustico."
say failed "Spiacenti, non è stato premuto nessun tasto valido. Arrivederci."
say blocked "Questa linea non accetta le Sue chiamate. Arrivederci."
say hold "Grazie. Attenda in linea, La metto in comunicazione."
say ask_name "Dopo il segnale, dica il Suo nome."
# what the household hears when a screened caller is put through
say call_from "Chiamata da"
say press "Premere"
say to_talk "per parlare."
say to_voicemail "per passarla alla segreteria."
say to_block "per bloccarla."
say done "Fatto. Arrivederci."
set -- 0 zero 1 uno 2 due 3 tre 4 quattro 5 cinque 6 sei 7 sette 8 otto 9 nove star asterisco hash cancelletto
while [ $# -gt 0 ]; do
    say "key_$1" "$2."
    shift 2
done
