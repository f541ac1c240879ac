package kagi.conf;

class Rect extends Shape implements Named {
    short w;
    short h;

    Rect(short w, short h) {
        this.w = w;
        this.h = h;
    }

    short area() {
        return (short) (w * h);
    }

    public short id() {
        return 2;
    }
}
