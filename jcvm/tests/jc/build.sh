#!/bin/sh
# Builds conf.cap from src/ with the Java Card 3.0.5u3 kit (not part of the repository:
# github.com/martinpaljak/oracle_javacard_sdks, jc305u3_kit). Usage: KIT=path/to/jc305u3_kit ./build.sh
set -eu
cd "$(dirname "$0")"
K=${KIT:?set KIT to the jc305u3_kit directory}
CP=$(ls "$K"/lib/*.jar | tr '\n' ':')
rm -rf classes out && mkdir classes out
javac -source 7 -target 7 -g:none -nowarn -cp "$K/lib/api_classic.jar" -d classes $(find src -name '*.java')
java -Djc.home="$K" -cp "$CP" com.sun.javacard.converter.Main -i -classdir classes \
  -exportpath "$K/api_export_files" -applet 0xF0:0x6B:0x61:0x67:0x69:0x01:0x01 kagi.conf.Conf \
  -applet 0xF0:0x6B:0x61:0x67:0x69:0x01:0x02 kagi.conf.Ext \
  -out CAP JCA -d out kagi.conf 0xF0:0x6B:0x61:0x67:0x69:0x01 1.0
cp out/kagi/conf/javacard/conf.cap conf.cap
cp out/kagi/conf/javacard/conf.jca conf.jca
rm -rf classes out

# gp.cap: the GPSystem conformance applet (gp/), built when GP names the GlobalPlatform Card
# API 1.6 directory of github.com/OpenJavaCard/globalplatform-exports (org.globalplatform-1.6:
# its gpapi-globalplatform.jar and exports/).
if [ -n "${GP:-}" ]; then
  rm -rf classes out && mkdir classes out
  javac -source 7 -target 7 -g:none -nowarn -cp "$K/lib/api_classic.jar:$GP/gpapi-globalplatform.jar" \
    -d classes $(find gp -name '*.java')
  java -Djc.home="$K" -cp "$CP" com.sun.javacard.converter.Main -i -classdir classes \
    -exportpath "$K/api_export_files:$GP/exports" \
    -applet 0xF0:0x6B:0x61:0x67:0x69:0x02:0x01 kagi.gp.GpConf \
    -out CAP JCA -d out kagi.gp 0xF0:0x6B:0x61:0x67:0x69:0x02 1.0
  cp out/kagi/gp/javacard/gp.cap gp.cap
  cp out/kagi/gp/javacard/gp.jca gp.jca
  rm -rf classes out
fi

# share.cap and client.cap: a server applet sharing an interface (share/kagi/share/) and a
# client applet in another package calling it (share/kagi/client/). The converter is told
# not to generate its proxy classes (-useproxyclass): they are for the Connected edition, and
# generating them needs an older JDK.
rm -rf classes out && mkdir classes out
javac -source 7 -target 7 -g:none -nowarn -cp "$K/lib/api_classic.jar" -d classes \
  $(find share -name '*.java')
java -Djc.home="$K" -cp "$CP" com.sun.javacard.converter.Main -i -useproxyclass -classdir classes \
  -exportpath "$K/api_export_files" -applet 0xF0:0x6B:0x61:0x67:0x69:0x03:0x01 kagi.share.Server \
  -out CAP JCA EXP -d out kagi.share 0xF0:0x6B:0x61:0x67:0x69:0x03 1.0
java -Djc.home="$K" -cp "$CP" com.sun.javacard.converter.Main -i -useproxyclass -classdir classes \
  -exportpath "$K/api_export_files:out" -applet 0xF0:0x6B:0x61:0x67:0x69:0x04:0x01 kagi.client.Client \
  -out CAP JCA -d out kagi.client 0xF0:0x6B:0x61:0x67:0x69:0x04 1.0
cp out/kagi/share/javacard/share.cap out/kagi/share/javacard/share.jca .
cp out/kagi/client/javacard/client.cap out/kagi/client/javacard/client.jca .
rm -rf classes out

# pkgctx.cap (pkgctx/kagi/pkgctx/: package F06B61676905, applet Member F06B6167690501, several
# instances of which share their package's context) and relay.cap (pkgctx/kagi/relay/: package
# F06B61676906, applet Relay F06B6167690601, importing kagi.pkgctx and kagi.share: a shareable
# call that calls on into a third context) and pong.cap (pkgctx/kagi/pong/: package
# F06B61676907, applet Pong F06B6167690701, importing kagi.pkgctx: Pong and Relay call each
# other back until the card stops the nesting).
rm -rf classes out && mkdir classes out
javac -source 7 -target 7 -g:none -nowarn -cp "$K/lib/api_classic.jar" -d classes \
  $(find share pkgctx -name '*.java')
java -Djc.home="$K" -cp "$CP" com.sun.javacard.converter.Main -i -useproxyclass -classdir classes \
  -exportpath "$K/api_export_files" -applet 0xF0:0x6B:0x61:0x67:0x69:0x03:0x01 kagi.share.Server \
  -out EXP -d out kagi.share 0xF0:0x6B:0x61:0x67:0x69:0x03 1.0
java -Djc.home="$K" -cp "$CP" com.sun.javacard.converter.Main -i -useproxyclass -classdir classes \
  -exportpath "$K/api_export_files" -applet 0xF0:0x6B:0x61:0x67:0x69:0x05:0x01 kagi.pkgctx.Member \
  -out CAP JCA EXP -d out kagi.pkgctx 0xF0:0x6B:0x61:0x67:0x69:0x05 1.0
java -Djc.home="$K" -cp "$CP" com.sun.javacard.converter.Main -i -useproxyclass -classdir classes \
  -exportpath "$K/api_export_files:out" -applet 0xF0:0x6B:0x61:0x67:0x69:0x06:0x01 kagi.relay.Relay \
  -out CAP JCA -d out kagi.relay 0xF0:0x6B:0x61:0x67:0x69:0x06 1.0
java -Djc.home="$K" -cp "$CP" com.sun.javacard.converter.Main -i -useproxyclass -classdir classes \
  -exportpath "$K/api_export_files:out" -applet 0xF0:0x6B:0x61:0x67:0x69:0x07:0x01 kagi.pong.Pong \
  -out CAP JCA -d out kagi.pong 0xF0:0x6B:0x61:0x67:0x69:0x07 1.0
cp out/kagi/pkgctx/javacard/pkgctx.cap out/kagi/pkgctx/javacard/pkgctx.jca .
cp out/kagi/relay/javacard/relay.cap out/kagi/relay/javacard/relay.jca .
cp out/kagi/pong/javacard/pong.cap out/kagi/pong/javacard/pong.jca .
rm -rf classes out
